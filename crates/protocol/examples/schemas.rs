//! Writes the generated API documents: `docs/schemas/**.json`, `docs/openapi.json` and
//! `docs/asyncapi.json`, and removes schema files it no longer generates.
//!
//! `cargo run -p cortex-protocol --features schema --example schemas -- docs`
//!
//! The test `schemas::docs_match_the_generator` fails while `docs/` differs from what this writes.

use std::path::{Path, PathBuf};

use cortex_protocol::schema::documents;

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: schemas DOCS_DIR   (the docs/ directory of the repository)");
        std::process::exit(2);
    };
    let docs = documents();
    // Stale schema files first: every .json under schemas/ that is no longer generated.
    let mut stale = Vec::new();
    list_json(&dir.join("schemas"), &mut stale)?;
    for path in stale {
        let rel = path
            .strip_prefix(&dir)
            .expect("under dir")
            .to_string_lossy();
        if !docs
            .iter()
            .any(|d| Path::new(&d.path) == Path::new(rel.as_ref()))
        {
            std::fs::remove_file(&path)?;
            println!("removed {}", path.display());
        }
    }
    for d in &docs {
        let path = dir.join(&d.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, d.text())?;
    }
    println!("wrote {} files under {}", docs.len(), dir.display());
    Ok(())
}

fn list_json(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            list_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}
