//! Where an output lives, decided in one place from the `--output` value (for `app consume`)
//! or the argument of `app inspect`: a local directory ([`LocalStore`]) or an object-storage
//! URL, `s3://bucket/prefix`, `gs://…` or `az://…` ([`ObjectOutput`]). Everything else only
//! sees the [`Store`] that [`Location::open`] returns.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::object::{ObjectOptions, ObjectOutput, ObjectUrl};
use super::store::{LocalStore, Store, StoreError};

/// An output location, parsed (see the module docs). Holds no secret: credentials are read
/// from the environment when the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Object {
        url: ObjectUrl,
        options: ObjectOptions,
    },
}

impl Location {
    /// Parses an `--output` value: a URL with a scheme (`s3://`, `gs://`, `az://`) is object
    /// storage, anything else a local path.
    pub fn parse(text: &str, options: &ObjectOptions) -> Result<Location, String> {
        match ObjectUrl::parse(text) {
            None => Ok(Location::Local(PathBuf::from(text))),
            Some(Ok(url)) => Ok(Location::Object {
                url,
                options: options.clone(),
            }),
            Some(Err(e)) => Err(e),
        }
    }

    /// Opens the store. Blocking (object storage is checked with one request): call it from
    /// `spawn_blocking`.
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Location::Local(path) => Ok(Arc::new(LocalStore::new(path))),
            Location::Object { url, options } => Ok(Arc::new(ObjectOutput::open(url, options)?)),
        }
    }

    /// The local directory, if this is one.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Object { .. } => None,
        }
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::Local(path)
    }
}

impl From<&std::path::Path> for Location {
    fn from(path: &std::path::Path) -> Self {
        Location::Local(path.to_path_buf())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object { url, .. } => write!(f, "{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_local_and_urls_are_object_storage() {
        let o = ObjectOptions::default();
        assert_eq!(
            Location::parse("./output", &o).unwrap(),
            Location::Local(PathBuf::from("./output"))
        );
        assert_eq!(
            Location::parse("/data/out dir", &o).unwrap().local_path(),
            Some(std::path::Path::new("/data/out dir"))
        );
        match Location::parse("s3://bucket/runs/a/", &o).unwrap() {
            Location::Object { url, .. } => assert_eq!(url.to_string(), "s3://bucket/runs/a/"),
            other => panic!("{other:?}"),
        }
        assert!(Location::parse("s4://bucket/x", &o).is_err());
    }
}
