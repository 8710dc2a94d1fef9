//! `cascade.toml`: which heads exist, what they output, which file holds each, and how
//! they form a tree. Written by `carwatch train`, read by everything that classifies.
//!
//! ```toml
//! format = 1
//! root = "view"
//!
//! [backbone]
//! file = "vgg19.safetensors"          # relative to this directory, or absolute
//! widths = [64, 128, 256, 512, 512]   # VGG-19; narrower in tests
//!
//! [[head]]
//! id = "view"
//! level = "view"
//! labels = ["angled", "front"]
//! weights = "heads/view.safetensors"
//! hidden = 256
//! next = { angled = "angled/make", front = "front/make" }
//! ```
//!
//! A head with a single label has no weights: its answer is certain. Head weights use
//! the names of a PyTorch `nn.Sequential(Linear, ReLU, Dropout, Linear)`: `0.weight`,
//! `0.bias`, `3.weight`, `3.bias`, so heads trained in Python load unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;
use super::backbone::VggSpec;
use super::labels::{Leaf, Level};

/// File name of the manifest inside a models directory.
pub const MANIFEST_FILE: &str = "cascade.toml";
/// The manifest format this build reads and writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The directory the manifest was read from; relative paths resolve against it.
    #[serde(skip)]
    pub dir: PathBuf,
    pub format: u32,
    /// Shown in logs and `classify` output when set: the synthetic demo model says here
    /// that its predictions are not about real vehicles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    pub root: String,
    pub backbone: BackboneEntry,
    #[serde(rename = "head")]
    pub heads: Vec<HeadEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneEntry {
    pub file: PathBuf,
    #[serde(default = "vgg19")]
    pub widths: VggSpec,
    /// The same backbone quantized to int8 (TorchScript), for the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<PathBuf>,
    /// Share of validation photos on which the int8 backbone gave the same path as fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_agreement: Option<f64>,
}

fn vgg19() -> VggSpec {
    VggSpec::VGG19
}

impl BackboneEntry {
    pub fn spec(&self) -> VggSpec {
        self.widths
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadEntry {
    /// Unique name; by convention the path of labels above it (`front/bmw/model`).
    pub id: String,
    pub level: Level,
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    #[serde(default = "default_hidden")]
    pub hidden: i64,
    /// Label -> id of the head that refines it. Every label of a view or make head has
    /// one; model heads have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub next: BTreeMap<String, String>,
    /// What `train` measured on held-out images; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
}

fn default_hidden() -> i64 {
    256
}

impl Manifest {
    /// Reads and validates `dir/cascade.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let mut manifest: Manifest =
            toml::from_str(&text).map_err(|e| ModelError::Manifest { path: path.clone(), reason: e.to_string() })?;
        manifest.dir = dir.to_path_buf();
        manifest.validate().map_err(|reason| ModelError::Manifest { path, reason })?;
        Ok(manifest)
    }

    /// Writes `dir/cascade.toml` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.validate().map_err(|reason| ModelError::Manifest { path: dir.join(MANIFEST_FILE), reason })?;
        let path = dir.join(MANIFEST_FILE);
        let body = toml::to_string_pretty(self)
            .map_err(|e| ModelError::Manifest { path: path.clone(), reason: e.to_string() })?;
        let text = format!("# Written by `carwatch train`; see docs/models.md.\n{body}");
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|source| ModelError::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| ModelError::Io { path, source })
    }

    pub fn backbone_path(&self) -> PathBuf {
        self.dir.join(&self.backbone.file)
    }

    pub fn int8_path(&self) -> Option<PathBuf> {
        self.backbone.int8.as_ref().map(|p| self.dir.join(p))
    }

    pub fn head_weights_path(&self, head: &HeadEntry) -> Option<PathBuf> {
        head.weights.as_ref().map(|w| self.dir.join(w))
    }

    /// Every (view, make, model) the cascade answers, in tree order, from the manifest
    /// alone (no weights loaded). Call on a validated manifest.
    pub fn leaves(&self) -> Vec<Leaf> {
        let by_id: HashMap<&str, &HeadEntry> = self.heads.iter().map(|h| (h.id.as_str(), h)).collect();
        let mut out = Vec::new();
        let Some(root) = by_id.get(self.root.as_str()) else { return out };
        for view in &root.labels {
            let Some(make_head) = root.next.get(view).and_then(|id| by_id.get(id.as_str())) else { continue };
            for make in &make_head.labels {
                let Some(model_head) = make_head.next.get(make).and_then(|id| by_id.get(id.as_str())) else { continue };
                for model in &model_head.labels {
                    out.push(Leaf::new(view, make, model));
                }
            }
        }
        out
    }

    /// Checks that the heads form one tree rooted at a view head, levels in order
    /// view -> make -> model, every label refined down to a model.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {} is not supported by this carwatch (it reads format {FORMAT})", self.format));
        }
        let mut by_id: HashMap<&str, &HeadEntry> = HashMap::new();
        for h in &self.heads {
            if by_id.insert(h.id.as_str(), h).is_some() {
                return Err(format!("head `{}` is defined twice", h.id));
            }
            if h.labels.is_empty() {
                return Err(format!("head `{}` has no labels", h.id));
            }
            let mut seen = HashSet::new();
            for l in &h.labels {
                if !seen.insert(l.to_lowercase()) {
                    return Err(format!("head `{}` lists label `{l}` twice", h.id));
                }
            }
            if h.labels.len() > 1 && h.weights.is_none() {
                return Err(format!("head `{}` has {} labels but no weights file", h.id, h.labels.len()));
            }
            if h.hidden <= 0 {
                return Err(format!("head `{}`: hidden must be positive", h.id));
            }
            for label in h.next.keys() {
                if !h.labels.contains(label) {
                    return Err(format!("head `{}`: next names `{label}`, which is not one of its labels", h.id));
                }
            }
            match h.level.below() {
                Some(_) => {
                    if let Some(l) = h.labels.iter().find(|l| !h.next.contains_key(*l)) {
                        return Err(format!("head `{}` ({} level): label `{l}` has no next head", h.id, h.level));
                    }
                }
                None if !h.next.is_empty() => {
                    return Err(format!("head `{}` is a model head and cannot have next heads", h.id));
                }
                None => {}
            }
        }
        let root = by_id.get(self.root.as_str()).ok_or_else(|| format!("root head `{}` is not defined", self.root))?;
        if root.level != Level::View {
            return Err(format!("root head `{}` must be a view head, not {}", root.id, root.level));
        }
        let mut reached: HashSet<&str> = HashSet::new();
        let mut stack = vec![root.id.as_str()];
        while let Some(id) = stack.pop() {
            if !reached.insert(id) {
                return Err(format!("head `{id}` is reached twice; the heads must form a tree"));
            }
            let h = by_id[id];
            for target in h.next.values() {
                let t = by_id
                    .get(target.as_str())
                    .ok_or_else(|| format!("head `{}` names unknown head `{target}`", h.id))?;
                if Some(t.level) != h.level.below() {
                    return Err(format!(
                        "head `{}` ({}) leads to `{}` ({}); expected a {} head",
                        h.id,
                        h.level,
                        t.id,
                        t.level,
                        h.level.below().map_or("-", Level::name)
                    ));
                }
                stack.push(target.as_str());
            }
        }
        if let Some(h) = self.heads.iter().find(|h| !reached.contains(h.id.as_str())) {
            return Err(format!("head `{}` is not reachable from the root `{}`", h.id, self.root));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(id: &str, level: Level, labels: &[&str], next: &[(&str, &str)]) -> HeadEntry {
        HeadEntry {
            id: id.into(),
            level,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            weights: (labels.len() > 1).then(|| PathBuf::from(format!("heads/{id}.safetensors"))),
            hidden: 8,
            next: next.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            validation_accuracy: None,
        }
    }

    fn manifest(heads: Vec<HeadEntry>) -> Manifest {
        Manifest {
            dir: PathBuf::new(),
            format: FORMAT,
            notice: None,
            root: "view".into(),
            backbone: BackboneEntry {
                file: "b.safetensors".into(),
                widths: VggSpec::VGG19,
                int8: None,
                int8_agreement: None,
            },
            heads,
        }
    }

    fn good() -> Vec<HeadEntry> {
        vec![
            head("view", Level::View, &["front", "angled"], &[("front", "front/make"), ("angled", "angled/make")]),
            head("front/make", Level::Make, &["bmw"], &[("bmw", "front/bmw/model")]),
            head("angled/make", Level::Make, &["bmw"], &[("bmw", "angled/bmw/model")]),
            head("front/bmw/model", Level::Model, &["3", "5"], &[]),
            head("angled/bmw/model", Level::Model, &["3", "5"], &[]),
        ]
    }

    #[test]
    fn a_proper_tree_validates_and_round_trips() {
        let m = manifest(good());
        m.validate().unwrap();
        let text = toml::to_string_pretty(&m).unwrap();
        let back: Manifest = toml::from_str(&text).unwrap();
        back.validate().unwrap();
        assert_eq!(back.heads.len(), 5);
        let leaves: Vec<String> = back.leaves().iter().map(|l| format!("{}/{}/{}", l.view, l.make, l.model)).collect();
        assert_eq!(leaves, vec!["front/bmw/3", "front/bmw/5", "angled/bmw/3", "angled/bmw/5"]);
    }

    #[test]
    fn broken_trees_are_named() {
        let mut h = good();
        h[0].next.insert("front".into(), "nowhere".into());
        assert!(manifest(h).validate().unwrap_err().contains("unknown head `nowhere`"));

        let mut h = good();
        h[1].next.clear();
        assert!(manifest(h).validate().unwrap_err().contains("label `bmw` has no next head"));

        let mut h = good();
        h[2].next.insert("bmw".into(), "front/bmw/model".into());
        assert!(manifest(h).validate().unwrap_err().contains("reached twice"));

        let mut h = good();
        h[3].weights = None;
        assert!(manifest(h).validate().unwrap_err().contains("no weights file"));

        let mut h = good();
        h[0].next.insert("front".into(), "front/bmw/model".into());
        let err = manifest(h).validate().unwrap_err();
        assert!(err.contains("expected a make head") || err.contains("not reachable"), "{err}");
    }
}
