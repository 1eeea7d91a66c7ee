//! Webhook delivery: lifecycle events POSTed as JSON, signed with an HMAC
//! of the body, retried with backoff, in a task of their own so the media
//! path never waits for them.

use std::time::Duration;

use aws_lc_rs::hmac;
use sluice_server::Metrics;
use sluice_server::events::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::WebhookConfig;

/// Events queued for delivery before new ones are dropped (and counted).
const QUEUE: usize = 1024;
/// First retry delay; it doubles per attempt, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The signature header value for `body`: `sha256=<hex HMAC-SHA256>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Start the sender when a URL is configured: the shards' end of the event
/// queue and the delivery task (which ends when the queue closes).
pub fn spawn(
    config: &WebhookConfig,
    metrics: Metrics,
) -> Option<(mpsc::Sender<Event>, JoinHandle<()>)> {
    let url = config.url.clone()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let sender = Sender {
        url,
        secret: config.secret.clone().into_bytes(),
        attempts: config.max_attempts.max(1),
        timeout: Duration::from_millis(config.timeout_ms),
        client: reqwest::Client::new(),
        metrics,
    };
    Some((tx, tokio::spawn(sender.run(rx))))
}

struct Sender {
    url: String,
    secret: Vec<u8>,
    attempts: u32,
    timeout: Duration,
    client: reqwest::Client,
    metrics: Metrics,
}

impl Sender {
    /// Deliver events in order, each with its retries.
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(event) = rx.recv().await {
            let outcome = if self.deliver(&event).await {
                "delivered"
            } else {
                "failed"
            };
            self.metrics.webhooks.with_label_values(&[outcome]).inc();
        }
    }

    async fn deliver(&self, event: &Event) -> bool {
        let Ok(body) = serde_json::to_vec(event) else {
            return false;
        };
        let signature = signature(&self.secret, &body);
        let name = serde_json::to_value(event.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=self.attempts {
            let result = self
                .client
                .post(&self.url)
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .header("sluice-event", &name)
                .header("sluice-signature", &signature)
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    debug!(event = %name, attempt, status = r.status().as_u16(), "webhook refused")
                }
                Err(e) => debug!(event = %name, attempt, "webhook failed: {e}"),
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        warn!(event = %name, room = %event.room, attempts = self.attempts, "webhook not delivered");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
