//! How `kiln` shows the progress export, check and run report: bars on a terminal, plain lines when stderr
//! is a log or a pipe, nothing with `--json` (a script reading stdout wants stderr for errors only).

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use runtime::{NoProgress, Progress};

/// The progress display for a command: none when `quiet` (`--json`), bars when stderr is a terminal,
/// else lines.
pub fn on_stderr(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(NoProgress)
    } else if std::io::stderr().is_terminal() {
        Box::new(ProgressBars::default())
    } else {
        Box::new(ProgressLines::new(std::io::stderr()))
    }
}

/// indicatif bars on stderr: a spinner for a step measured in time, a bar for one counted in items. A
/// finished step's line stays, with how long it took.
#[derive(Default)]
struct ProgressBars {
    current: RefCell<Option<ProgressBar>>,
}

impl Progress for ProgressBars {
    fn start(&self, what: &str, total: Option<u64>) {
        self.finish();
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            ),
            None => {
                let spinner = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed_precise}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                spinner.enable_steady_tick(Duration::from_millis(100));
                spinner
            }
        };
        bar.set_message(what.to_owned());
        *self.current.borrow_mut() = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.current.borrow() {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current.borrow_mut().take() {
            bar.finish();
        }
    }

    fn note(&self, message: &str) {
        match &*self.current.borrow() {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}

/// One line per step and per tenth of a counted step, each stamped with the seconds since the command
/// started: readable in a CI log, where a redrawn bar would be hundreds of lines of carriage returns.
struct ProgressLines<W: Write> {
    out: RefCell<W>,
    started: Instant,
    step: RefCell<Option<CountedStep>>,
}

/// The counted step being reported: its name, size, and how far it has got.
struct CountedStep {
    what: String,
    total: u64,
    done: u64,
}

impl<W: Write> ProgressLines<W> {
    fn new(out: W) -> Self {
        ProgressLines { out: RefCell::new(out), started: Instant::now(), step: RefCell::new(None) }
    }

    /// Progress is a courtesy: a closed or full stderr must not fail the command, so write errors are
    /// dropped.
    fn line(&self, text: &str) {
        let seconds = self.started.elapsed().as_secs_f64();
        let _ = writeln!(self.out.borrow_mut(), "[{seconds:>7.2}s] {text}");
    }
}

impl<W: Write> Progress for ProgressLines<W> {
    fn start(&self, what: &str, total: Option<u64>) {
        match total {
            Some(total) => self.line(&format!("{what}: 0/{total}")),
            None => self.line(what),
        }
        *self.step.borrow_mut() = total.map(|total| CountedStep { what: what.to_owned(), total, done: 0 });
    }

    fn advance(&self, n: u64) {
        let mut step = self.step.borrow_mut();
        let Some(step) = step.as_mut() else { return };
        let total = step.total;
        let tenth = |done: u64| (done.min(total) * 10).checked_div(total).unwrap_or(10);
        let before = tenth(step.done);
        step.done = step.done.saturating_add(n);
        if tenth(step.done) > before {
            self.line(&format!("{}: {}/{}", step.what, step.done.min(step.total), step.total));
        }
    }

    fn finish(&self) {
        self.step.borrow_mut().take();
    }

    fn note(&self, message: &str) {
        self.line(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines without their time stamps, which depend on how fast the test ran.
    fn untimed(bytes: &[u8]) -> anyhow::Result<Vec<String>> {
        String::from_utf8(bytes.to_vec())?
            .lines()
            .map(|line| {
                let (stamp, text) =
                    line.split_once("] ").ok_or_else(|| anyhow::anyhow!("no stamp: {line}"))?;
                anyhow::ensure!(stamp.starts_with('[') && stamp.ends_with('s'), "stamp {stamp:?}");
                Ok(text.to_owned())
            })
            .collect()
    }

    #[test]
    fn plain_lines_report_steps_and_each_tenth_of_counted_steps() -> anyhow::Result<()> {
        let lines = ProgressLines::new(Vec::new());
        lines.start("building graph", None);
        lines.note("removed a leftover");
        lines.start("classifying images", Some(20));
        for _ in 0..20 {
            lines.advance(1);
        }
        lines.finish();
        lines.start("three batches", Some(3));
        lines.advance(2);
        lines.advance(5);
        lines.finish();
        lines.advance(1);
        let mut expected = vec![
            "building graph".to_owned(),
            "removed a leftover".to_owned(),
            "classifying images: 0/20".to_owned(),
        ];
        expected.extend((1..=10).map(|tenth| format!("classifying images: {}/20", 2 * tenth)));
        expected.extend(["three batches: 0/3", "three batches: 2/3", "three batches: 3/3"].map(String::from));
        assert_eq!(untimed(&lines.out.into_inner())?, expected);
        Ok(())
    }

    #[test]
    fn an_empty_counted_step_prints_its_start_only() -> anyhow::Result<()> {
        let lines = ProgressLines::new(Vec::new());
        lines.start("nothing to do", Some(0));
        lines.advance(0);
        lines.finish();
        assert_eq!(untimed(&lines.out.into_inner())?, ["nothing to do: 0/0"]);
        Ok(())
    }
}
