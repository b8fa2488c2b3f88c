//! The `go` implementation of a workload: runs `benches/go/<workload>.go` with `go run`, which prints its own
//! RESULT line (measured inside the Go process, so `vmhwm_kib` is the Go program's).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether a Go toolchain is installed (the suite skips the `go` rows otherwise).
pub fn available() -> bool {
    go_binary().is_some()
}

/// Where a Go toolchain is: `go` on PATH, else Debian's golang-1.19-go location.
fn go_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("go"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let debian = Path::new("/usr/lib/go-1.19/bin/go");
        debian.is_file().then(|| debian.to_path_buf())
    })
}

/// Runs one Go program and forwards its RESULT line.
pub fn run(workload: &str, args: &[String]) -> Result<(), String> {
    let go = go_binary()
        .ok_or("no Go toolchain: `go` is not on PATH (install golang-1.19-go or put go on PATH)")?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("go")
        .join(format!("{workload}.go"));
    let shared = source.with_file_name("peak.go");
    let output = Command::new(&go)
        .arg("run")
        .arg(&source)
        .arg(&shared)
        .args(args)
        .env("GO111MODULE", "off")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", go.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        return Err(format!(
            "go run {} failed: {}",
            source.display(),
            output.status
        ));
    }
    if !stdout.lines().any(|l| l.starts_with("RESULT ")) {
        return Err(format!(
            "go run {} printed no RESULT line",
            source.display()
        ));
    }
    Ok(())
}
