//! Names the git commit the node is built from, for `fxn_build_info` and the start-up log line:
//! `FXN_COMMIT` when the build sets it (an image built without `.git`), else git's answer, else
//! `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// Rebuilds when git's file at `path` (in the git directory) changes. A file that does not exist is
/// not named: cargo would take it as changed and rebuild the crate on every build. (A branch's loose
/// ref that `git pack-refs` removes is a change all the same, once it existed.)
fn watch_git_path(path: &str) {
    if let Some(path) = git(&["rev-parse", "--git-path", path]).filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=FXN_COMMIT");
    let commit = std::env::var("FXN_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // A new commit moves HEAD or the branch it names; either change rebuilds.
        watch_git_path("HEAD");
        watch_git_path("packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch_git_path(&branch);
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=FXN_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
