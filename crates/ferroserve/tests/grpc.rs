//! The gRPC service end to end: the HTTP suite's bad-input cases with their gRPC status codes,
//! grpc.health.v1, client deadlines and the message size limit.

mod common;

use std::time::Duration;

use common::{model_dir, Repo, Server};
use ferroserve_grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferroserve_grpc::proto::model_infer_request::InferInputTensor;
use ferroserve_grpc::proto::{InferTensorContents, ModelInferRequest};
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn i32_bytes(n: usize) -> bytes::Bytes {
    (0..n as i32)
        .flat_map(i32::to_le_bytes)
        .collect::<Vec<u8>>()
        .into()
}

/// A good request to `simple`, to be spoiled one way per case.
fn simple() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            input("INPUT0", "INT32", &[1, 16]),
            input("INPUT1", "INT32", &[1, 16]),
        ],
        raw_input_contents: vec![i32_bytes(16), i32_bytes(16)],
        ..Default::default()
    }
}

#[test]
fn bad_input_gets_the_matching_status_code_and_message() {
    let server = Server::start(
        Repo::with(&["simple", "string_identity", "identity"]),
        &["--grpc-max-message-bytes", "100000"],
    );
    let url = server.grpc_url();
    let with = |f: &dyn Fn(&mut ModelInferRequest)| {
        let mut r = simple();
        f(&mut r);
        r
    };
    let mut bad_bytes = 100u32.to_le_bytes().to_vec();
    bad_bytes.extend_from_slice(b"short");
    let cases: Vec<(&str, ModelInferRequest, Code, &str)> = vec![
        (
            // Found by fuzzing: a few bytes declaring terabytes made the server allocate for the
            // shape before counting the elements, and abort.
            "typed contents under a huge declared shape",
            ModelInferRequest {
                model_name: "simple".into(),
                inputs: vec![InferInputTensor {
                    contents: Some(InferTensorContents {
                        int_contents: vec![1, 2, 3, 4],
                        ..Default::default()
                    }),
                    ..input("INPUT0", "INT32", &[1 << 40])
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "the shape needs 1099511627776 elements but int_contents holds 4",
        ),
        (
            "unknown model",
            with(&|r| r.model_name = "nope".into()),
            Code::NotFound,
            "unknown model 'nope'",
        ),
        (
            "unknown version",
            with(&|r| r.model_version = "9".into()),
            Code::NotFound,
            "unknown version '9'",
        ),
        (
            "unknown input",
            with(&|r| r.inputs[1].name = "INPUT9".into()),
            Code::InvalidArgument,
            "has no input 'INPUT9'",
        ),
        (
            "missing input",
            with(&|r| {
                r.inputs.pop();
                r.raw_input_contents.pop();
            }),
            Code::InvalidArgument,
            "missing input 'INPUT1'",
        ),
        (
            "wrong dtype",
            with(&|r| r.inputs[0].datatype = "FP32".into()),
            Code::InvalidArgument,
            "expects INT32",
        ),
        (
            "unknown dtype",
            with(&|r| r.inputs[0].datatype = "FLOAT".into()),
            Code::InvalidArgument,
            "unknown datatype 'FLOAT'",
        ),
        (
            "wrong rank",
            with(&|r| r.inputs[0].shape = vec![16]),
            Code::InvalidArgument,
            "has rank 1",
        ),
        (
            "wrong dim",
            with(&|r| {
                r.inputs[0].shape = vec![2, 8];
            }),
            Code::InvalidArgument,
            "dimension 1 is 8",
        ),
        (
            "byte count",
            with(&|r| r.raw_input_contents[0] = i32_bytes(15)),
            Code::InvalidArgument,
            "needs 64 bytes, got 60",
        ),
        (
            "typed count",
            with(&|r| {
                r.raw_input_contents.clear();
                r.inputs[0].contents = Some(InferTensorContents {
                    int_contents: vec![1; 15],
                    ..Default::default()
                });
                r.inputs[1].contents = Some(InferTensorContents {
                    int_contents: vec![1; 16],
                    ..Default::default()
                });
            }),
            Code::InvalidArgument,
            "needs 16 elements but int_contents holds 15",
        ),
        (
            "raw count",
            with(&|r| {
                r.raw_input_contents.pop();
            }),
            Code::InvalidArgument,
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (
            "negative dim",
            with(&|r| r.inputs[0].shape = vec![-1, 16]),
            Code::InvalidArgument,
            "negative dimension",
        ),
        (
            "huge declared shape",
            with(&|r| r.inputs[0].shape = vec![1_000_000_000_000, 16]),
            Code::InvalidArgument,
            "needs 64000000000000 bytes, got 64",
        ),
        (
            "overflowing shape",
            with(&|r| r.inputs[0].shape = vec![1 << 32, 1 << 32, 16]),
            Code::InvalidArgument,
            "more elements than can be addressed",
        ),
        (
            "unknown output",
            with(&|r| {
                r.outputs = vec![
                    ferroserve_grpc::proto::model_infer_request::InferRequestedOutputTensor {
                        name: "OUT".into(),
                        parameters: Default::default(),
                    },
                ]
            }),
            Code::InvalidArgument,
            "has no output 'OUT'",
        ),
        (
            "malformed BYTES",
            ModelInferRequest {
                model_name: "string_identity".into(),
                inputs: vec![input("TEXT", "BYTES", &[1, 1])],
                raw_input_contents: vec![bad_bytes.into()],
                ..Default::default()
            },
            Code::InvalidArgument,
            "malformed BYTES",
        ),
        (
            "message over the limit",
            ModelInferRequest {
                model_name: "identity".into(),
                inputs: vec![input("INPUT0", "FP32", &[2000, 16])],
                raw_input_contents: vec![vec![0u8; 128_000].into()],
                ..Default::default()
            },
            Code::ResourceExhausted,
            "message length too large",
        ),
    ];
    runtime().block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
        for (what, req, code, needle) in cases {
            let status = client.model_infer(req).await.expect_err(what);
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(
                status.message().contains(needle),
                "{what}: '{}' should contain '{needle}'",
                status.message()
            );
        }
        // The server is unharmed.
        let ok = client.model_infer(simple()).await.unwrap().into_inner();
        assert_eq!(ok.raw_output_contents.len(), 2);
    });
}

#[test]
fn health_reports_serving_and_deadlines_are_honoured() {
    let repo = Repo::with(&["simple"]);
    repo.write("slow/model.yaml", b"threads: 1\n");
    repo.link("slow/1", &model_dir("slow").join("1"));
    let server = Server::start(repo, &[]);
    let url = server.grpc_url();
    runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        for service in ["", "inference.GRPCInferenceService"] {
            // Health follows readiness a moment after HTTP reports it: ask until it does.
            let mut status = None;
            for _ in 0..100 {
                let r = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                status = Some(r.status());
                if r.status() == tonic_health::pb::health_check_response::ServingStatus::Serving {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                status,
                Some(tonic_health::pb::health_check_response::ServingStatus::Serving),
                "{service:?}"
            );
        }

        let slow = |iters: i64| ModelInferRequest {
            model_name: "slow".into(),
            inputs: vec![input("ITERS", "INT64", &[1, 1])],
            raw_input_contents: vec![iters.to_le_bytes().to_vec().into()],
            ..Default::default()
        };
        let mut a = GrpcInferenceServiceClient::new(channel.clone());
        let mut b = GrpcInferenceServiceClient::new(channel);
        // A long request holds the only replica; one queued behind it with a 100 ms deadline
        // fails with DEADLINE_EXCEEDED, and its work never runs.
        let long = tokio::spawn(async move { a.model_infer(slow(4000)).await });
        // The metrics client is blocking reqwest, which refuses to run on a runtime's thread.
        let metric = |name: &str| {
            std::thread::scope(|s| {
                s.spawn(|| server.metric(name, &[("model", "slow")]))
                    .join()
                    .unwrap()
            })
        };
        while metric("ferroserve_inflight_requests") != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut req = tonic::Request::new(slow(7));
        req.set_timeout(Duration::from_millis(100));
        let status = b.model_infer(req).await.expect_err("past its deadline");
        // The server answers DEADLINE_EXCEEDED when its queue timer fires first; tonic's client
        // reports its own timer as CANCELLED "Timeout expired" (grpc-core clients say
        // DEADLINE_EXCEEDED either way). What matters is below: the work never ran.
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(long.await.unwrap().is_ok());
        let ran = metric("ferroserve_batch_size_count");
        assert_eq!(ran, Some(1.0), "only the long request ran");
    });
}

#[test]
fn repository_load_and_unload_need_the_management_token_when_one_is_set() {
    use ferroserve_grpc::proto::RepositoryModelUnloadRequest;
    let server = Server::start(
        Repo::with(&["simple"]),
        &["--management-token", "grpc-secret"],
    );
    let url = server.grpc_url();
    runtime().block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
        let unload = |token: Option<&str>| {
            let mut req = tonic::Request::new(RepositoryModelUnloadRequest {
                model_name: "simple".into(),
                ..Default::default()
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            req
        };
        for token in [None, Some("wrong")] {
            let status = client
                .repository_model_unload(unload(token))
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
        // Still serving after the refused calls.
        assert!(client.model_infer(simple()).await.is_ok());
        client
            .repository_model_unload(unload(Some("grpc-secret")))
            .await
            .unwrap();
        let status = client.model_infer(simple()).await.expect_err("unloaded");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    });
}

#[test]
fn a_stream_may_pause_longer_than_the_body_timeout() {
    // The body-rate limits are for request bodies that must arrive whole; a gRPC stream of
    // inferences may rightly wait between messages.
    let server = Server::start(
        Repo::with(&["simple"]),
        &["--body-read-timeout", "1", "--min-body-rate", "100000"],
    );
    let url = server.grpc_url();
    runtime().block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut answers = client
            .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for _ in 0..2 {
            tx.send(simple()).await.unwrap();
            let answer = answers.message().await.unwrap().expect("an answer");
            assert!(answer.error_message.is_empty(), "{}", answer.error_message);
            assert_eq!(answer.infer_response.unwrap().raw_output_contents.len(), 2);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
}
