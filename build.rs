//! Names the git commit the node is built from, for `fxn_build_info` and the start-up log line:
//! `FXN_COMMIT` when the build sets it (an image built without `.git`), else git's answer, else
//! `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FXN_COMMIT");
    let commit = std::env::var("FXN_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // A new commit moves HEAD or the branch it names; either change rebuilds.
        for path in ["HEAD", "packed-refs"] {
            if let Some(path) = git(&["rev-parse", "--git-path", path]) {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=FXN_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
