//! The `cargo xtask` commands, one module each.

pub mod bench;
pub mod build;
pub mod fuzz;
pub mod image;
pub mod lint;
pub mod mutants;
pub mod run;
pub mod test;

/// Runs every step, even after one fails, and reports all failures at the
/// end: a lint or test run should show everything that is wrong at once.
#[derive(Debug, Default)]
pub struct Steps {
    failed: Vec<String>,
}

impl Steps {
    pub fn step(&mut self, name: &str, result: crate::Result<()>) {
        if let Err(e) = result {
            eprintln!("xtask: {name} failed: {e}");
            self.failed.push(name.to_string());
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
