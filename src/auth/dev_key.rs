//! The development signing key: created on first start in the data folder, so a laptop run
//! needs no configuration and `visithub token` can mint tokens the running hub accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const FILE_NAME: &str = "dev-signing-key";

pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the key, creating it (32 random bytes, file mode 0600) when missing.
/// Returns the key and whether it was created now.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(Vec<u8>, bool)> {
    let path = path_in(data_dir);
    if path.exists() {
        return Ok((load(&path)?, false));
    }
    std::fs::create_dir_all(data_dir)?;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(STANDARD_NO_PAD.encode(key).as_bytes())?;
    Ok((key.to_vec(), true))
}

pub fn load(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read signing key {}: {e}", path.display()))?;
    Ok(STANDARD_NO_PAD.decode(text.trim())?)
}

/// A short fingerprint to recognise a key by, without printing it.
pub fn fingerprint(key: &[u8]) -> String {
    hex::encode(&Sha256::digest(key)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(first.len(), 32);
        let (again, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path_in(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
