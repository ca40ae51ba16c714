//! Running the external tools the pipeline is made of.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Runs `cmd`, capturing its output; fails with the tool's stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Runs `cmd` and returns its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let output = run(cmd)?;
    String::from_utf8(output.stdout).with_context(|| format!("{} printed non-UTF-8", describe(cmd)))
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    if text.len() > 300 {
        text.truncate(300);
        text.push_str("...");
    }
    text
}
