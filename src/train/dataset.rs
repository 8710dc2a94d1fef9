//! The labelled photo folder: `DIR/<view>/<make>/<model>/*.{jpg,jpeg,png}`.
//!
//! Folder names are the labels. Each folder level becomes heads: one view head over
//! the view folders, one make head per view, one model head per (view, make). A folder
//! with a single subfolder gives a single-label head, which needs no training.
//! Files that are not images, and images at the wrong depth, are listed as skipped
//! rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::TrainError;
use crate::model::Level;

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One labelled photo.
#[derive(Debug, Clone)]
pub struct Photo {
    pub path: PathBuf,
    /// Index into [`Dataset::leaves`].
    pub leaf: usize,
    /// Held out for validation (never trained on, never flipped).
    pub validation: bool,
}

/// The folder tree, scanned.
#[derive(Debug)]
pub struct Dataset {
    pub photos: Vec<Photo>,
    /// (view, make, model) of each leaf folder that holds at least one image.
    pub leaves: Vec<[String; 3]>,
    /// Files that were not used, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A head to train: its place in the tree and which photos it sees with which label.
#[derive(Debug)]
pub struct HeadPlan {
    pub id: String,
    pub level: Level,
    pub labels: Vec<String>,
    pub next: BTreeMap<String, String>,
    /// (photo index, label index)
    pub samples: Vec<(usize, usize)>,
}

impl Dataset {
    /// Scans `dir`.
    pub fn scan(dir: &Path) -> Result<Dataset, TrainError> {
        let mut photos = Vec::new();
        let mut leaves = Vec::new();
        let mut skipped = Vec::new();
        for view in subdirs(dir, &mut skipped, 0)? {
            for make in subdirs(&view, &mut skipped, 1)? {
                for model in subdirs(&make, &mut skipped, 2)? {
                    let mut images = Vec::new();
                    for entry in read_dir_sorted(&model)? {
                        let is_image = entry
                            .extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
                        if entry.is_file() && is_image {
                            images.push(entry);
                        } else {
                            skipped.push((entry, "not a .jpg/.jpeg/.png file at <view>/<make>/<model>/".into()));
                        }
                    }
                    if images.is_empty() {
                        skipped.push((model.clone(), "model folder holds no images".into()));
                        continue;
                    }
                    let leaf = leaves.len();
                    leaves.push([name(&view), name(&make), name(&model)]);
                    photos.extend(images.into_iter().map(|path| Photo { path, leaf, validation: false }));
                }
            }
        }
        if leaves.is_empty() {
            return Err(TrainError::Dataset(format!(
                "{} holds no images in <view>/<make>/<model>/ folders",
                dir.display()
            )));
        }
        Ok(Dataset { photos, leaves, skipped })
    }

    /// Marks about `fraction` of each leaf's photos (at least one where a leaf has two
    /// or more) as validation, reproducibly for a given `seed`.
    pub fn split(&mut self, fraction: f64, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for leaf in 0..self.leaves.len() {
            let mut idx: Vec<usize> = (0..self.photos.len()).filter(|&i| self.photos[i].leaf == leaf).collect();
            idx.shuffle(&mut rng);
            let n = idx.len();
            let n_val = if n < 2 { 0 } else { ((n as f64 * fraction).round() as usize).clamp(1, n - 1) };
            for &i in &idx[..n_val] {
                self.photos[i].validation = true;
            }
        }
    }

    /// The heads this tree needs, root first.
    pub fn heads(&self) -> Vec<HeadPlan> {
        let mut heads = Vec::new();
        let views = unique(self.leaves.iter().map(|l| &l[0]));
        heads.push(self.plan("view".into(), Level::View, &views, |l| Some(&l[0]), |v| format!("{v}/make")));
        for v in &views {
            let makes = unique(self.leaves.iter().filter(|l| &l[0] == v).map(|l| &l[1]));
            heads.push(self.plan(
                format!("{v}/make"),
                Level::Make,
                &makes,
                |l| (&l[0] == v).then_some(&l[1]),
                |m| format!("{v}/{m}/model"),
            ));
            for m in &makes {
                let models = unique(self.leaves.iter().filter(|l| &l[0] == v && &l[1] == m).map(|l| &l[2]));
                heads.push(self.plan(
                    format!("{v}/{m}/model"),
                    Level::Model,
                    &models,
                    |l| (&l[0] == v && &l[1] == m).then_some(&l[2]),
                    |_| String::new(),
                ));
            }
        }
        heads
    }

    fn plan<'a>(
        &'a self,
        id: String,
        level: Level,
        labels: &[String],
        label_of: impl Fn(&'a [String; 3]) -> Option<&'a String>,
        next_id: impl Fn(&str) -> String,
    ) -> HeadPlan {
        let samples = self
            .photos
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let l = label_of(&self.leaves[p.leaf])?;
                Some((i, labels.iter().position(|x| x == l)?))
            })
            .collect();
        let next = if level == Level::Model {
            BTreeMap::new()
        } else {
            labels.iter().map(|l| (l.clone(), next_id(l))).collect()
        };
        HeadPlan { id, level, labels: labels.to_vec(), next, samples }
    }
}

fn unique<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

fn name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let rd = std::fs::read_dir(dir).map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Subfolders of `dir`; anything else at this depth is skipped with a reason.
fn subdirs(dir: &Path, skipped: &mut Vec<(PathBuf, String)>, depth: usize) -> Result<Vec<PathBuf>, TrainError> {
    let level = ["view", "make", "model"][depth];
    let mut out = Vec::new();
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            out.push(p);
        } else {
            skipped.push((p, format!("expected only {level} folders here")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn scans_tree_plans_heads_and_splits_per_leaf() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for i in 0..5 {
            touch(&r.join(format!("front/bmw/x5/{i}.jpg")));
            touch(&r.join(format!("front/bmw/i3/{i}.png")));
            touch(&r.join(format!("front/audi/a4/{i}.JPEG")));
            touch(&r.join(format!("angled/bmw/x5/{i}.jpg")));
        }
        touch(&r.join("front/bmw/x5/notes.txt"));
        touch(&r.join("stray.jpg"));
        std::fs::create_dir_all(r.join("angled/bmw/empty")).unwrap();

        let mut ds = Dataset::scan(r).unwrap();
        assert_eq!(ds.leaves.len(), 4);
        assert_eq!(ds.photos.len(), 20);
        assert_eq!(ds.skipped.len(), 3, "{:?}", ds.skipped);

        let heads = ds.heads();
        let ids: Vec<&str> = heads.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["view", "angled/make", "angled/bmw/model", "front/make", "front/audi/model", "front/bmw/model"]
        );
        assert_eq!(heads[0].labels, vec!["angled", "front"]);
        assert_eq!(heads[0].samples.len(), 20);
        assert_eq!(heads[1].labels, vec!["bmw"]);
        assert_eq!(heads[5].labels, vec!["i3", "x5"]);
        assert_eq!(heads[5].samples.len(), 10);
        assert_eq!(heads[3].next["bmw"], "front/bmw/model");

        ds.split(0.2, 1);
        for leaf in 0..4 {
            let val = ds.photos.iter().filter(|p| p.leaf == leaf && p.validation).count();
            assert_eq!(val, 1, "leaf {leaf}");
        }
        let before: Vec<bool> = ds.photos.iter().map(|p| p.validation).collect();
        let mut again = Dataset::scan(r).unwrap();
        again.split(0.2, 1);
        assert_eq!(before, again.photos.iter().map(|p| p.validation).collect::<Vec<_>>());
    }
}
