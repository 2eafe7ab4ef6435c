//! The CLI's view of a `Progress`: an indicatif bar on stderr, drawn only when stderr is
//! a terminal (indicatif's stderr target hides itself otherwise), so logs and CI output
//! stay clean.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{LayerState, Progress};

/// Redraws until dropped.
pub struct Bar {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// `verb` is shown before the figures ("pushing", "pulling", "sending").
    pub fn spawn(progress: Progress, verb: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(verb);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let s = progress.snapshot();
                let done = s
                    .layers
                    .iter()
                    .filter(|l| matches!(l.state, LayerState::Done | LayerState::Skipped))
                    .count();
                let retrying = s
                    .layers
                    .iter()
                    .filter(|l| l.state == LayerState::Retrying)
                    .count();
                bar.set_message(format!(
                    "{:.1} MiB on the wire, {:.1} MB/s, layers {done}/{}{}",
                    s.wire_bytes as f64 / 1048576.0,
                    s.wire_rate / 1e6,
                    s.layers.len(),
                    if retrying > 0 {
                        format!(" ({retrying} retrying)")
                    } else {
                        String::new()
                    }
                ));
                bar.tick();
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            bar.finish_and_clear();
        });
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops drawing and clears the line.
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
