//! Where a task finds its extra files: the version folder first, then the model folder.

use std::path::PathBuf;

/// The folders a task's files may live in, most specific first.
#[derive(Debug, Clone)]
pub struct Files {
    dirs: Vec<PathBuf>,
}

impl Files {
    /// `dirs` in lookup order (the version folder, then the model folder).
    pub fn new(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut unique: Vec<PathBuf> = Vec::new();
        for d in dirs {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        Self { dirs: unique }
    }

    /// The first existing `name`, if any. `name` is a relative path inside the folders.
    pub fn try_find(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
    }

    /// The first existing `name`, or an error naming where it was looked for.
    pub fn find(&self, name: &str) -> Result<PathBuf, String> {
        let relative = std::path::Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !relative {
            return Err(format!(
                "'{name}' must be a file name inside the model's folder"
            ));
        }
        self.try_find(name).ok_or_else(|| {
            let looked: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
            format!("'{name}' not found (looked in {})", looked.join(" and "))
        })
    }
}
