//! `dir`: ensure a directory exists (with its parents), optionally with a mode.

use crate::host::{fail, report};
use crate::idem::plugin::fs;
use crate::idem::plugin::report::{StepError, StepReport};
use crate::plan::DirStep;

/// Run a `dir` step. The host's `create-dir` is itself idempotent and converges the mode.
pub fn run(step: &DirStep) -> Result<StepReport, StepError> {
    fs::create_dir(&step.dir, step.mode.map(|m| m.0))
        .map_err(|e| fail(format!("creating directory {}", step.dir), e))?;
    Ok(report(&[]))
}
