//! `remove`: ensure a path is absent.

use crate::host::{fail, report};
use crate::idem::plugin::fs;
use crate::idem::plugin::report::{StepError, StepReport};
use crate::idem::plugin::types::Error;
use crate::plan::RemoveStep;

/// Run a `remove` step: absent already is unchanged; a non-empty directory needs `recursive`.
pub fn run(step: &RemoveStep) -> Result<StepReport, StepError> {
    match fs::remove(&step.remove, step.recursive) {
        Ok(_) => Ok(report(&[])),
        Err(Error::NotEmpty(detail)) => Err(StepError {
            message: format!(
                "{} is a non-empty directory; add `recursive: true` to remove it with its content",
                step.remove
            ),
            cause: Some(Error::NotEmpty(detail)),
        }),
        Err(e) => Err(fail(format!("removing {}", step.remove), e)),
    }
}
