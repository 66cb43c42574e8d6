//! Server-Sent Events for the generative tasks (`"stream": true`, `?stream=true`):
//!
//! - summarization: `event: token` with `{"text": piece}` as tokens are generated (greedy search
//!   and sampling; beam search knows its tokens only at the end, so they come in one piece),
//!   then `event: done` with `{"summary_text": ...}`; the pieces put together are the summary;
//! - text-to-image: `event: progress` with `{"step": 5, "of": 20}` after each denoising step,
//!   then `event: done` with `{"image": <base64 PNG>, "width": .., "height": ..}`;
//! - a failure once the stream has begun: `event: error` with `{"error": ...}`.
//!
//! A request that fails before its first step (a bad parameter, an unknown model) gets the plain
//! 4xx answer, not a stream. The model's reports go through a latest-value channel
//! ([`Progress`]), so a slow client never holds the model back; a client that disconnects drops
//! the stream, and with it the request, which stops at the next step as any other.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferroserve_core::{Error, Parameters, Partial, Progress, ProgressReader, Result};
use ferroserve_runtime::{Runtime, TaskAnswer};
use ferroserve_tasks::{Task, TaskInput, TaskOutput};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::generate::{image_json, summary_json};

/// Whether a request asks for a stream: `stream` in its parameters (taken out of them: it is
/// the server's, not the model's), as a JSON boolean or the query's `true`/`false`.
pub(crate) fn wanted(parameters: &mut Parameters) -> Result<bool> {
    match parameters.remove("stream") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(Error::invalid(format!(
            "'stream' must be true or false, got {other}"
        ))),
    }
}

type Run = Pin<Box<dyn Future<Output = Result<TaskAnswer>> + Send>>;

/// Runs `text` through `model`'s generative task and answers with its events.
pub(crate) async fn answer(
    runtime: Arc<Runtime>,
    model: String,
    version: Option<String>,
    text: String,
    parameters: Parameters,
) -> std::result::Result<Response, ApiError> {
    let task = runtime.task(&model, version.as_deref())?.ok_or_else(|| {
        Error::invalid(format!(
            "model '{model}' has no task to stream an answer from"
        ))
    })?;
    let (progress, mut reader) = Progress::channel();
    let mut run: Run = Box::pin(async move {
        runtime
            .run_task_reporting(
                &model,
                version.as_deref(),
                TaskInput::Texts(vec![text]),
                parameters,
                Some(progress),
            )
            .await
    });
    // Until the first step, a failure is the request's plain answer.
    let finished = tokio::select! {
        result = &mut run => Some(result?),
        changed = reader.changed() => match changed {
            Ok(()) => None,
            // The model dropped its progress without a report: its answer comes next.
            Err(_) => Some((&mut run).await?),
        },
    };
    let mut events = Events {
        task,
        reader,
        run: None,
        sent: String::new(),
        queue: VecDeque::new(),
        ended: false,
    };
    match finished {
        Some(answer) => events.finish(Ok(answer)),
        None => {
            events.read_progress();
            events.run = Some(run);
        }
    }
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.next().await?;
        Some((Ok::<_, Infallible>(event), events))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What woke a stream up.
enum Woke {
    Finished(Result<TaskAnswer>),
    Reported,
    Closed,
}

/// The state of one stream: the running request, its progress, and the events not yet sent.
struct Events {
    task: Arc<Task>,
    reader: ProgressReader,
    run: Option<Run>,
    /// The text sent so far in `token` events.
    sent: String,
    queue: VecDeque<Event>,
    ended: bool,
}

impl Events {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let run = self.run.as_mut()?;
            let woke = tokio::select! {
                result = run => Woke::Finished(result),
                changed = self.reader.changed() => match changed {
                    Ok(()) => Woke::Reported,
                    Err(_) => Woke::Closed,
                },
            };
            match woke {
                Woke::Finished(result) => {
                    self.run = None;
                    self.finish(result);
                }
                Woke::Reported => self.read_progress(),
                // Reports are over; the answer follows.
                Woke::Closed => {
                    if let Some(run) = self.run.take() {
                        let result = run.await;
                        self.finish(result);
                    }
                }
            }
        }
    }

    /// Queues the event of the latest report.
    fn read_progress(&mut self) {
        let partial = self.reader.borrow_and_update().clone();
        match partial {
            Some(Partial::Tokens(ids)) => {
                // The text so far, decoded whole: pieces decoded alone would lose the spaces
                // and the characters that span tokens. A decoding that does not extend what
                // was sent waits for the next token (or the final text).
                if let Ok(text) = self.task.text_so_far(&ids) {
                    self.send_text(&text);
                }
            }
            Some(Partial::Steps { done, of }) => self.queue.push_back(
                Event::default()
                    .event("progress")
                    .data(json!({"step": done, "of": of}).to_string()),
            ),
            None => {}
        }
    }

    /// Queues a `token` event with what `text` adds to the text sent so far.
    fn send_text(&mut self, text: &str) {
        if let Some(piece) = text
            .strip_prefix(self.sent.as_str())
            .filter(|p| !p.is_empty())
        {
            self.queue.push_back(
                Event::default()
                    .event("token")
                    .data(json!({ "text": piece }).to_string()),
            );
            self.sent = text.to_string();
        }
    }

    /// Queues the last events: the rest of the text and `done`, or `error`.
    fn finish(&mut self, result: Result<TaskAnswer>) {
        self.ended = true;
        let done = match result.and_then(|answer| self.final_value(answer.output)) {
            Ok(value) => Event::default().event("done").data(value.to_string()),
            Err(e) => Event::default()
                .event("error")
                .data(json!({ "error": e.to_string() }).to_string()),
        };
        self.queue.push_back(done);
    }

    /// The `done` event's value, after a `token` event with the text's last piece.
    fn final_value(&mut self, output: TaskOutput) -> Result<Value> {
        match output {
            TaskOutput::Texts(mut texts) => {
                let g = texts
                    .pop()
                    .ok_or_else(|| Error::internal("the model gave no text"))?;
                self.send_text(&g.text);
                Ok(summary_json(&g))
            }
            TaskOutput::Images(mut images) => {
                let image = images
                    .pop()
                    .ok_or_else(|| Error::internal("the model gave no image"))?;
                image_json(&image)
            }
            _ => Err(Error::internal("unexpected answer from a generative task")),
        }
    }
}
