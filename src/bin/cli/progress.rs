//! Progress on stderr for the long commands: a bar with the step's name, its rate and the time left (indicatif). Quiet
//! when stderr is not a terminal (indicatif's stderr target hides itself there) and in `--json` mode, so that what is
//! piped or parsed holds only the results.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One command's progress: a bar once the total is known, a spinner with a count until then.
pub(crate) struct Progress {
    bar: ProgressBar,
    unit: &'static str,
}

impl Progress {
    /// Progress counted in `unit`s ("step", "window", "matrix", "point"); hidden when `quiet`.
    pub(crate) fn new(unit: &'static str, quiet: bool) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(Self::spinner_style(unit));
        Self { bar, unit }
    }

    fn spinner_style(unit: &str) -> ProgressStyle {
        ProgressStyle::with_template(&format!("{{spinner}} {{pos}} {unit}s  {{per_sec}}  {{elapsed}}  {{wide_msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    fn bar_style(unit: &str) -> ProgressStyle {
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit}s  {{per_sec}}  {{eta}} left  {{wide_msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    /// `done` of `total` units, the last one named `what`.
    pub(crate) fn set(&self, done: usize, total: usize, what: &str) {
        if self.bar.length() != Some(total as u64) {
            self.bar.set_length(total as u64);
            self.bar.set_style(Self::bar_style(self.unit));
        }
        self.bar.set_position(done as u64);
        self.bar.set_message(what.to_string());
    }

    /// One more unit, named `what`, when the total is not known.
    pub(crate) fn tick(&self, what: &str) {
        self.bar.inc(1);
        self.bar.set_message(what.to_string());
    }

    /// Clear the bar before the results are printed.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
