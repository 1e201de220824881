//! The `cargo xtask` commands, one module each.

pub mod bench;
pub mod build;
pub mod fuzz;
pub mod image;
pub mod kut;
pub mod lint;
pub mod mutants;
pub mod run;
pub mod test;

/// Runs every step, even after one fails, and reports all failures at the
/// end: a lint or test run should show everything that is wrong at once.
#[derive(Debug, Default)]
pub struct Steps {
    ran: Vec<String>,
    failed: Vec<String>,
}

impl Steps {
    pub fn step(&mut self, name: &str, result: crate::Result<()>) {
        self.ran.push(name.to_string());
        if let Err(e) = result {
            eprintln!("xtask: {name} failed: {e}");
            self.failed.push(name.to_string());
        }
    }

    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// The one-line verdict a person reads last, e.g.
    /// `lint: ok (rustfmt, clippy host)` or `lint: FAILED: clippy host`.
    pub fn verdict(&self, command: &str) -> String {
        if self.failed.is_empty() {
            format!("{command}: ok ({})", self.ran.join(", "))
        } else {
            format!("{command}: FAILED: {}", self.failed.join(", "))
        }
    }

    pub fn finish(self) -> crate::Result<()> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            crate::bail!("failed steps: {}", self.failed.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lists_every_step_or_the_failed_ones() {
        let mut steps = Steps::default();
        steps.step("rustfmt", Ok(()));
        steps.step("clippy host", Ok(()));
        steps.step("clippy bare-metal", Ok(()));
        assert!(steps.passed());
        assert_eq!(
            steps.verdict("lint"),
            "lint: ok (rustfmt, clippy host, clippy bare-metal)"
        );
        steps.step("clippy bare-metal", Err(crate::Error::new("exit 101")));
        assert!(!steps.passed());
        assert_eq!(steps.verdict("lint"), "lint: FAILED: clippy bare-metal");
    }
}
