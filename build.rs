// Detects headless Chromium so that the report-rendering test runs where it
// can and is reported as ignored (never as passed) where it cannot.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_chromium)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=SHROUD_CHROMIUM");
    if let Some(p) = std::env::var_os("SHROUD_CHROMIUM") {
        println!(
            "cargo::rerun-if-changed={}",
            std::path::Path::new(&p).display()
        );
    }
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    let explicit = std::env::var_os("SHROUD_CHROMIUM").map(std::path::PathBuf::from);
    let found = explicit.filter(|p| p.exists()).is_some()
        || std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| candidates.iter().any(|c| dir.join(c).is_file()))
        });
    if found {
        println!("cargo::rustc-cfg=has_chromium");
    }
}
