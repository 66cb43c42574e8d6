// Starts Swagger UI on this server's own description. validatorUrl: null keeps it from sending
// the document to validator.swagger.io: the page makes no request outside this server.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: true,
});
