//! A one-line progress indicator on stderr: a spinner, a message and the
//! elapsed time, redrawn in place. Only on a terminal; elsewhere (pipes,
//! CI logs) it stays silent so output remains clean.

use std::io::{IsTerminal, Write};
use std::time::Instant;

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

pub struct Progress {
    enabled: bool,
    start: Instant,
    frame: usize,
    drawn: bool,
}

impl Progress {
    /// A progress line, drawn only when stderr is a terminal.
    pub fn stderr() -> Progress {
        Progress::new(std::io::stderr().is_terminal())
    }

    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            start: Instant::now(),
            frame: 0,
            drawn: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The line for `message` at the current frame.
    pub fn line(&self, message: &str) -> String {
        format!(
            "{} {message} ({}s)",
            FRAMES[self.frame % FRAMES.len()],
            self.start.elapsed().as_secs()
        )
    }

    /// Redraws the line with `message`.
    pub fn update(&mut self, message: &str) {
        if !self.enabled {
            return;
        }
        let line = self.line(message);
        self.frame += 1;
        let mut err = std::io::stderr().lock();
        // \r, the line, then clear to the end of the terminal line.
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the line (if drawn) and prints `message` in its place.
    pub fn finish(&mut self, message: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.drawn {
            let _ = write!(err, "\r\x1b[K");
        }
        if !message.is_empty() {
            let _ = writeln!(err, "{message}");
        }
        let _ = err.flush();
        self.drawn = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.drawn {
            self.finish("");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_and_disabled() {
        let mut p = super::Progress::new(false);
        assert!(!p.enabled());
        assert!(p.line("waiting").contains("waiting (0s)"));
        p.update("x"); // no output, no panic
        p.finish("done");
    }
}
