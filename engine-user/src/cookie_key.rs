//! Where the SYN-cookie secrets come from: a fresh random secret per period (one host alone), or
//! a key the hosts behind one address share (`--cookie-key-file`), from which every host derives
//! the same secret for each period (HKDF, RFC 5869), so each validates the others' cookies and
//! all rotate at the same moment without talking (`engine_common::cookie` for the periods).

use std::{
    collections::VecDeque,
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use engine_common::cookie::{KEYS, Key, Keys};
use hkdf::Hkdf;
use sha2::Sha256;

/// Key material a key file must hold at least, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// A larger file is not a key (a mistaken path).
const MAX_FILE_BYTES: u64 = 4096;
/// HKDF's salt (RFC 5869 2.2): fixed, naming what the key is for and this derivation's version.
const SALT: &[u8] = b"synx syn-cookie key v1";
/// HKDF's info for a period's secret, followed by the period (u32, big-endian).
const INFO_PERIOD: &[u8] = b"synx syn-cookie secret of period ";
/// HKDF's info for the key's fingerprint, which hosts exchange to find a host with another key.
const INFO_FINGERPRINT: &[u8] = b"synx syn-cookie key fingerprint";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cookie key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cookie key file {path}: {problem}")]
    Refused { path: PathBuf, problem: String },
    #[error("no randomness: {0}")]
    Random(std::io::Error),
}

/// A key shared by the hosts that serve one address.
#[derive(Clone)]
pub struct CookieKey {
    prk: Hkdf<Sha256>,
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKey({:016x})", self.fingerprint())
    }
}

impl CookieKey {
    /// The key in `path`: a regular file owned by the user synx runs as (root), readable by
    /// nobody else (mode 0600 or stricter), holding at least [`MIN_KEY_BYTES`] bytes of key:
    /// hex digits (as `synx keygen` writes them, 2 per byte) or raw bytes. Whitespace around
    /// it is ignored, so an editor's trailing newline does not change the key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.into(), source };
        let refuse = |problem: String| KeyError::Refused { path: path.into(), problem };
        // O_NOFOLLOW, and every check on the file opened, not on the path.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { refuse("is a symbolic link".into()) } else { io(e) })?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(refuse("is not a regular file".into()));
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(refuse(format!("is owned by uid {}, not by uid {euid} which runs synx: `chown {euid} {}`", meta.uid(), path.display())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "has mode {:04o}: other users can read the key (and mint cookies for every host); `chmod 600 {}`",
                meta.mode() & 0o7777,
                path.display()
            )));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(refuse(format!("has {} bytes: a key file holds a key, at most {MAX_FILE_BYTES} bytes", meta.len())));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        Self::from_file_bytes(&bytes).map_err(refuse)
    }

    /// The key in a key file's contents (see [`CookieKey::load`]).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, String> {
        let text = bytes.trim_ascii();
        let material = match decode_hex(text) {
            Some(decoded) => decoded,
            None => text.to_vec(),
        };
        if material.len() < MIN_KEY_BYTES {
            return Err(format!(
                "holds {} bytes of key, at least {MIN_KEY_BYTES} are needed (`synx keygen PATH` writes one)",
                material.len()
            ));
        }
        if material.iter().all(|&b| b == material[0]) {
            return Err("holds the same byte over and over: not a random key (`synx keygen PATH` writes one)".into());
        }
        Ok(Self::from_material(&material))
    }

    fn from_material(material: &[u8]) -> Self {
        Self { prk: Hkdf::<Sha256>::new(Some(SALT), material) }
    }

    /// The secret of `period` (HKDF-Expand, RFC 5869 2.3, of the key's PRK with the period).
    pub fn secret(&self, period: u32) -> Key {
        let mut info = [0u8; INFO_PERIOD.len() + 4];
        info[..INFO_PERIOD.len()].copy_from_slice(INFO_PERIOD);
        info[INFO_PERIOD.len()..].copy_from_slice(&period.to_be_bytes());
        let mut okm = [0u8; 16];
        self.prk.expand(&info, &mut okm).expect("16 bytes is a valid HKDF-SHA256 length");
        key_of(okm)
    }

    /// A fingerprint of the key (HKDF-Expand with its own info, so it tells nothing of the
    /// secrets): hosts compare fingerprints to find one with another key.
    pub fn fingerprint(&self) -> u64 {
        let mut okm = [0u8; 8];
        self.prk.expand(INFO_FINGERPRINT, &mut okm).expect("8 bytes is a valid HKDF-SHA256 length");
        u64::from_be_bytes(okm)
    }
}

fn key_of(b: [u8; 16]) -> Key {
    let (k0, k1) = b.split_at(8);
    Key { k0: u64::from_le_bytes(k0.try_into().expect("8 bytes")), k1: u64::from_le_bytes(k1.try_into().expect("8 bytes")) }
}

/// `text` as hex digits, two per byte, if it is that.
fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom into the unfilled part of a buffer we own.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(KeyError::Random(e));
        }
        filled += n as usize;
    }
    Ok(b)
}

/// A fresh random 128-bit secret.
pub fn random_key() -> Result<Key, KeyError> {
    Ok(key_of(random_bytes::<16>()?))
}

/// `synx keygen PATH`: write a new key, [`MIN_KEY_BYTES`] random bytes as hex digits and a
/// newline, to a file created mode 0600. An existing file is never overwritten: a host with a
/// new key rejects every other host's cookies until all have it.
pub fn keygen(path: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.into(), source };
    let bytes = random_bytes::<MIN_KEY_BYTES>()?;
    let mut text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Refused {
                    path: path.into(),
                    problem: "exists; not overwritten (remove it first if you mean to replace the key on every host)".into(),
                }
            } else {
                io(e)
            }
        })?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The secrets of each period, published `KEYS` at a time (`engine_common::cookie::Keys`).
#[derive(Debug)]
pub enum SecretSource {
    /// A fresh random secret per period, drawn when the period is first published: this host
    /// validates only its own cookies.
    Random(VecDeque<(u32, Key)>),
    /// Derived from a shared key.
    Shared(CookieKey),
}

impl Default for SecretSource {
    fn default() -> Self {
        Self::Random(VecDeque::new())
    }
}

impl SecretSource {
    /// The secrets of periods `newest`, `newest - 1`, ...: the same for the same period every
    /// time it is asked.
    pub fn keys(&mut self, newest: u32) -> Result<Keys, KeyError> {
        let mut keys = [Key::default(); KEYS];
        for (j, slot) in keys.iter_mut().enumerate() {
            let period = newest.wrapping_sub(j as u32);
            *slot = match self {
                Self::Shared(key) => key.secret(period),
                Self::Random(drawn) => match drawn.iter().find(|(p, _)| *p == period) {
                    Some((_, k)) => *k,
                    None => {
                        let k = random_key()?;
                        drawn.push_back((period, k));
                        k
                    }
                },
            };
        }
        if let Self::Random(drawn) = self {
            // Forget periods no longer published.
            drawn.retain(|(p, _)| newest.wrapping_sub(*p) < KEYS as u32);
        }
        Ok(Keys { newest, keys })
    }

    /// The shared key's fingerprint, 0 for random secrets.
    pub fn fingerprint(&self) -> u64 {
        match self {
            Self::Shared(key) => key.fingerprint(),
            Self::Random(_) => 0,
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Shared(_))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A fresh directory, removed on drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("synx-key-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_derivation_is_rfc_5869_hkdf_sha256() {
        // RFC 5869 A.1 (test case 1) through the same crate calls: the PRK and OKM it gives.
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(Some(&salt), &ikm).expand(&info, &mut okm).unwrap();
        let want = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865";
        assert_eq!(okm.iter().map(|b| format!("{b:02x}")).collect::<String>(), want);
        // Ours: SALT, the key as IKM, INFO_PERIOD + the period, 16 bytes as two LE words.
        let key = CookieKey::from_material(&[7u8; 40]);
        let mut info = INFO_PERIOD.to_vec();
        info.extend_from_slice(&12345u32.to_be_bytes());
        let mut okm = [0u8; 16];
        Hkdf::<Sha256>::new(Some(SALT), &[7u8; 40]).expand(&info, &mut okm).unwrap();
        assert_eq!(key.secret(12345), key_of(okm));
    }

    #[test]
    fn hosts_with_one_key_derive_one_secret_per_period_and_others_differ() {
        let a = CookieKey::from_file_bytes(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
        let b = CookieKey::from_file_bytes(b"  00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
        let c = CookieKey::from_file_bytes(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeef0").unwrap();
        assert_eq!(a.secret(7), b.secret(7), "whitespace around the key is not the key");
        assert_ne!(a.secret(7), a.secret(8));
        assert_ne!(a.secret(7), c.secret(7));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut source = SecretSource::Shared(a.clone());
        let keys = source.keys(100).unwrap();
        assert_eq!(keys.keys, [a.secret(100), a.secret(99), a.secret(98)]);
    }

    #[test]
    fn short_or_uniform_keys_are_refused() {
        // 31 bytes as hex, 31 raw bytes, all zeros.
        let short_hex = "ab".repeat(31);
        assert!(CookieKey::from_file_bytes(short_hex.as_bytes()).unwrap_err().contains("31 bytes"));
        assert!(CookieKey::from_file_bytes(&[0x41u8; 20]).is_err());
        assert!(CookieKey::from_file_bytes(&[0u8; 64]).unwrap_err().contains("same byte"));
        // 32 raw bytes that are not hex: taken as they are.
        let raw: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
        assert!(CookieKey::from_file_bytes(&raw).is_ok());
    }

    #[test]
    fn random_secrets_stay_the_same_for_a_period_and_are_forgotten_after() {
        let mut source = SecretSource::default();
        let first = source.keys(10).unwrap();
        let next = source.keys(11).unwrap();
        assert_eq!(next.keys[1], first.keys[0], "period 10's secret did not change");
        assert_eq!(next.keys[2], first.keys[1]);
        assert_ne!(next.keys[0], first.keys[0]);
        let SecretSource::Random(drawn) = &source else { unreachable!() };
        assert_eq!(drawn.len(), KEYS);
        assert_eq!(source.fingerprint(), 0);
    }

    #[test]
    fn keygen_writes_a_private_key_that_loads_and_never_overwrites() {
        let dir = Dir::new("gen");
        let path = dir.0.join("cookie.key");
        keygen(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 2 * MIN_KEY_BYTES);
        let key = CookieKey::load(&path).unwrap();
        let err = keygen(&path).unwrap_err().to_string();
        assert!(err.contains("not overwritten"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(CookieKey::load(&path).unwrap().fingerprint(), key.fingerprint());
        let other = dir.0.join("other.key");
        keygen(&other).unwrap();
        assert_ne!(CookieKey::load(&other).unwrap().fingerprint(), key.fingerprint());
    }

    #[test]
    fn a_key_file_others_can_read_or_a_link_is_refused() {
        let dir = Dir::new("perm");
        let path = dir.0.join("cookie.key");
        keygen(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = CookieKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("mode 0640") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(CookieKey::load(&path).is_ok(), "read-only for its owner is fine");
        let link = dir.0.join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(CookieKey::load(&link).unwrap_err().to_string().contains("symbolic link"));
        assert!(CookieKey::load(&dir.0).unwrap_err().to_string().contains("not a regular file"));
        assert!(CookieKey::load(&dir.0.join("none")).is_err());
        // Owned by another user.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = CookieKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
}
