use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::manifest::MANIFEST_PATH;
use crate::unpack::{unpack, Limits, Unpacked};
use crate::{archive, StoreError, ARCHIVE_EXTENSION};

/// Which archives of the store to serve (`--models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every archive in the store, each under its manifest's model name.
    All,
    /// `NAME=FILE` pairs: the archive FILE (inside the store) served as NAME, or a bare FILE
    /// (`None`), served under the name its manifest gives. Several pairs with one name are
    /// versions of one model.
    Named(Vec<(Option<String>, String)>),
}

impl Selection {
    /// Parses `--models` values: `all`, or `NAME=FILE` each.
    pub fn parse(values: &[String]) -> Result<Selection, StoreError> {
        if values.iter().any(|v| v == "all") {
            if values.len() > 1 {
                return Err(StoreError::Invalid(
                    "--models all serves every archive; give it alone".into(),
                ));
            }
            return Ok(Selection::All);
        }
        values
            .iter()
            .map(|v| match v.split_once('=') {
                Some((name, file)) if !name.is_empty() && !file.is_empty() => {
                    Ok((Some(name.to_string()), file.to_string()))
                }
                // TorchServe also takes a bare archive name, named by its manifest.
                _ if !v.contains('=') && !v.is_empty() => Ok((None, v.to_string())),
                _ => Err(StoreError::Invalid(format!(
                    "--models '{v}' must be all, NAME=FILE or FILE"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Selection::Named)
    }
}

/// A model of the store, ready to load: its versions' archives, unpacked and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    /// The name it is served under.
    pub name: String,
    /// The model folder (numeric version folders inside), as the model repository has them.
    pub dir: PathBuf,
    /// The archives it came from, by ascending version.
    pub archives: Vec<Unpacked>,
}

impl StoredModel {
    /// Identifies the exact archives the model came from: a changed archive changes it.
    pub fn fingerprint(&self) -> String {
        self.archives
            .iter()
            .map(|a| a.sha256.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// An archive verified earlier: its size and mtime then, and where it unpacked.
type Seen = (u64, Option<SystemTime>, Unpacked);

/// What [`Store::select`] found: each model's name, and the model or why it cannot serve.
pub type Selected = Vec<(String, Result<StoredModel, StoreError>)>;

/// A model store folder: archives (`NAME.far`) and `no-archive` folders.
pub struct Store {
    dir: PathBuf,
    cache: PathBuf,
    limits: Limits,
    /// Archives already verified, by path, with the size and mtime they had: polling the store
    /// re-hashes only what changed.
    seen: Mutex<HashMap<PathBuf, Seen>>,
}

impl Store {
    /// A store at `dir`, unpacking into `cache`.
    pub fn new(dir: PathBuf, cache: PathBuf, limits: Limits) -> Store {
        Store {
            dir,
            cache,
            limits,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The archives in the store: `*.far` and TorchServe's `*.mar` files, and folders holding
    /// either's manifest, sorted.
    pub fn archives(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(StoreError::io(&self.dir))? {
            let path = entry.map_err(StoreError::io(&self.dir))?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            // torch-model-archiver's tgz form is NAME.tar.gz.
            let archive = path.is_file()
                && (path.extension().is_some_and(|e| e == ARCHIVE_EXTENSION)
                    || crate::mar::is_mar(&path));
            if archive
                || path.join(MANIFEST_PATH).is_file()
                || path.join(crate::mar::MAR_MANIFEST).is_file()
            {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Unpacks and verifies the archive `file`, a name inside the store (never a path).
    pub fn open(&self, file: &str) -> Result<Unpacked, StoreError> {
        let plain = !file.is_empty()
            && !file.starts_with('.')
            && !file.contains(['/', '\\'])
            && Path::new(file).components().count() == 1;
        if !plain {
            return Err(StoreError::Invalid(format!(
                "'{file}' is not the name of a file in the model store"
            )));
        }
        let path = self.dir.join(file);
        if !path.exists() {
            return Err(StoreError::Invalid(format!(
                "no archive '{file}' in the model store {}",
                self.dir.display()
            )));
        }
        self.open_path(&path)
    }

    /// Unpacks and verifies the archive at `path` (the caller has checked that it may be read).
    pub fn open_path(&self, path: &Path) -> Result<Unpacked, StoreError> {
        let meta = std::fs::metadata(path).map_err(StoreError::io(path))?;
        let stamp = (meta.len(), meta.modified().ok());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((len, mtime, u)) = seen.get(path) {
            // A folder's files may change without its own mtime changing: always verified.
            if (*len, *mtime) == stamp && !meta.is_dir() {
                return Ok(u.clone());
            }
        }
        let u = unpack(path, &self.cache, &self.limits)?;
        seen.insert(path.to_path_buf(), (stamp.0, stamp.1, u.clone()));
        Ok(u)
    }

    /// The models `selection` names, each unpacked and verified, by name. A model whose archive
    /// fails is returned with its error, so the others still serve.
    pub fn select(&self, selection: &Selection) -> Result<Selected, StoreError> {
        let mut by_name: BTreeMap<String, Vec<Result<Unpacked, StoreError>>> = BTreeMap::new();
        match selection {
            Selection::All => {
                for path in self.archives()? {
                    let opened = self.open_path(&path);
                    let name = match &opened {
                        Ok(u) => u.manifest.model_name.clone(),
                        // Named after what the manifest says if it can be read, else the file.
                        Err(_) => manifest_name(&path),
                    };
                    by_name.entry(name).or_default().push(opened);
                }
            }
            Selection::Named(pairs) => {
                for (name, file) in pairs {
                    let opened = self.open(file);
                    let name = match (name, &opened) {
                        (Some(n), _) => n.clone(),
                        (None, Ok(u)) => u.manifest.model_name.clone(),
                        (None, Err(_)) => manifest_name(&self.dir.join(file)),
                    };
                    by_name.entry(name).or_default().push(opened);
                }
            }
        }
        Ok(by_name
            .into_iter()
            .map(|(name, opened)| {
                let model = crate::check_model_name(&name)
                    .map_err(StoreError::Invalid)
                    .and_then(|()| opened.into_iter().collect::<Result<Vec<_>, _>>())
                    .and_then(|archives| self.assemble(&name, archives));
                (name, model)
            })
            .collect())
    }

    /// The model folder of `archives` (versions of model `name`): the one archive's folder, or a
    /// folder in the cache linking each archive's version folder.
    fn assemble(&self, name: &str, mut archives: Vec<Unpacked>) -> Result<StoredModel, StoreError> {
        archives.sort_by_key(|a| a.manifest.model_version);
        for pair in archives.windows(2) {
            if pair[0].manifest.model_version == pair[1].manifest.model_version {
                return Err(StoreError::Invalid(format!(
                    "model '{name}': {} and {} are both version {}",
                    pair[0].file.display(),
                    pair[1].file.display(),
                    pair[0].manifest.model_version
                )));
            }
        }
        let dir = match archives.as_slice() {
            [one] => one.dir.clone(),
            _ => self.merged(name, &archives)?,
        };
        Ok(StoredModel {
            name: name.to_string(),
            dir,
            archives,
        })
    }

    fn merged(&self, name: &str, archives: &[Unpacked]) -> Result<PathBuf, StoreError> {
        use sha2::Digest;
        let mut key = sha2::Sha256::new();
        for a in archives {
            key.update(a.sha256.as_bytes());
        }
        let models = self.cache.join("models");
        let dir = models.join(format!("{name}-{}", &hex::encode(key.finalize())[..16]));
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = models.join(format!(".{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(StoreError::io(&tmp))?;
        let newest = archives.len() - 1;
        for (i, a) in archives.iter().enumerate() {
            let version = a.manifest.model_version.to_string();
            for entry in std::fs::read_dir(&a.dir).map_err(StoreError::io(&a.dir))? {
                let entry = entry.map_err(StoreError::io(&a.dir))?;
                let file_name = entry.file_name();
                let name = file_name.to_string_lossy();
                // Each archive gives its version folder; the newest gives the model's config.
                let take = name == version
                    || (i == newest && name.parse::<u64>().is_err() && name != "FAR-INF");
                if take {
                    let link = tmp.join(&file_name);
                    std::os::unix::fs::symlink(entry.path(), &link)
                        .map_err(StoreError::io(&link))?;
                }
            }
        }
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(dir)
    }
}

/// The model name an archive's manifest gives, else the file's stem.
fn manifest_name(path: &Path) -> String {
    let named = if crate::mar::is_mar(path) {
        crate::mar::model_name(path)
    } else {
        archive::inspect(path).ok().map(|m| m.model_name)
    };
    named.unwrap_or_else(|| stem(path))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArchiveSpec;

    fn archive_version(tmp: &Path, store: &Path, version: u64, weights: &[u8]) -> PathBuf {
        let src = tmp.join(format!("src{version}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("model.onnx"), weights).unwrap();
        let out = crate::archive::create(&ArchiveSpec {
            model_name: "m".into(),
            version: Some(version),
            model_path: src.join("model.onnx"),
            export_path: tmp.join("out"),
            force: true,
            ..ArchiveSpec::default()
        })
        .unwrap();
        let target = store.join(format!("m-v{version}.far"));
        std::fs::rename(out, &target).unwrap();
        target
    }

    #[test]
    fn versions_of_one_model_are_merged() {
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("store");
        std::fs::create_dir_all(&store_dir).unwrap();
        archive_version(tmp.path(), &store_dir, 1, b"one");
        archive_version(tmp.path(), &store_dir, 2, b"two");
        let store = Store::new(store_dir, tmp.path().join("cache"), Limits::default());
        let models = store.select(&Selection::All).unwrap();
        assert_eq!(models.len(), 1);
        let m = models[0].1.as_ref().unwrap();
        assert_eq!(std::fs::read(m.dir.join("1/model.onnx")).unwrap(), b"one");
        assert_eq!(std::fs::read(m.dir.join("2/model.onnx")).unwrap(), b"two");
        assert_eq!(m.archives.len(), 2);

        let named = Selection::parse(&["x=m-v2.far".into()]).unwrap();
        let models = store.select(&named).unwrap();
        assert_eq!(models[0].0, "x");
        assert!(store.open("../m-v2.far").is_err());
    }

    #[test]
    fn selection_parsing() {
        assert_eq!(Selection::parse(&["all".into()]).unwrap(), Selection::All);
        assert_eq!(
            Selection::parse(&["a=x.far".into(), "b.far".into()]).unwrap(),
            Selection::Named(vec![
                (Some("a".into()), "x.far".into()),
                (None, "b.far".into())
            ])
        );
        assert!(Selection::parse(&["all".into(), "a=x.far".into()]).is_err());
        assert!(Selection::parse(&["=x.far".into()]).is_err());
    }
}
