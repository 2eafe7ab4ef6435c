//! The CLI's view of a `Progress`: an indicatif bar on stderr, drawn only when stderr is
//! a terminal (indicatif's stderr target hides itself otherwise), so logs and CI output
//! stay clean.
//!
//! Bars live in one process-wide `MultiProgress`, and log lines go through [`LogWriter`],
//! which clears the bars, writes the line and redraws them: a log line never leaves a
//! half-drawn bar behind it in the scrollback.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)))
}

/// stderr for log lines, with the progress bars out of the way while a line is written
/// (`tracing_subscriber::fmt().with_writer(|| LogWriter)`).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        bars().suspend(|| std::io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

use super::{LayerState, Progress};

/// Redraws until dropped.
pub struct Bar {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// `verb` is shown before the figures ("pushing", "pulling", "sending").
    pub fn spawn(progress: Progress, verb: &'static str) -> Self {
        let bar = bars().add(ProgressBar::new_spinner());
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
            bars().remove(&bar);
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
