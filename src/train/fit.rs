//! Training one head on cached features.
//!
//! Adam on cross-entropy, minibatches drawn class-balanced (each class equally likely,
//! whatever its photo count, so a rare model is not drowned by a common one), early
//! stopping on validation loss with the best weights restored. The network is the
//! manifest's MLP, built in a `VarStore` with the names PyTorch would give it, so the
//! saved file is what [`crate::model::cascade`] loads.

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::TrainError;
use crate::model::ModelError;

/// Settings shared by every head of one training run.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub hidden: i64,
    pub dropout: f64,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: i64,
    pub max_epochs: usize,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            hidden: 256,
            dropout: 0.5,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            batch_size: 32,
            max_epochs: 100,
            patience: 8,
        }
    }
}

/// A trained head and how it did.
pub struct Fitted {
    pub vars: nn::VarStore,
    pub val_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub epochs: usize,
}

/// Features and integer labels, on the CPU.
pub struct Split {
    pub x: Tensor,
    pub y: Tensor,
}

impl Split {
    pub fn len(&self) -> i64 {
        self.y.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn mlp(root: &nn::Path, inputs: i64, classes: i64, opts: &FitOptions) -> nn::SequentialT {
    let dropout = opts.dropout;
    nn::seq_t()
        .add(nn::linear(root / "0", inputs, opts.hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add_fn_t(move |x, train| x.dropout(dropout, train))
        .add(nn::linear(root / "3", opts.hidden, classes, Default::default()))
}

fn torch(context: &str) -> impl FnOnce(tch::TchError) -> TrainError + '_ {
    move |source| TrainError::Model(ModelError::Torch { context: context.to_string(), source })
}

/// Trains a `classes`-way head on `train`, stopping on `val` loss (when `val` has any
/// samples; otherwise after `max_epochs / 4` epochs). `on_epoch` sees each epoch end.
pub fn fit(
    train: &Split,
    val: &Split,
    classes: i64,
    opts: &FitOptions,
    seed: i64,
    mut on_epoch: impl FnMut(usize),
) -> Result<Fitted, TrainError> {
    tch::manual_seed(seed);
    let vars = nn::VarStore::new(Device::Cpu);
    let inputs = train.x.size()[1];
    let net = mlp(&vars.root(), inputs, classes, opts);
    let mut opt = nn::Adam { wd: opts.weight_decay, ..Default::default() }
        .build(&vars, opts.learning_rate)
        .map_err(torch("creating optimiser"))?;

    // Sample weights: 1 / (count of the sample's class).
    let counts = train.y.bincount::<Tensor>(None, classes).to_kind(Kind::Float);
    let weights = Tensor::ones([classes], (Kind::Float, Device::Cpu))
        .f_div(&counts.clamp_min(1.0))
        .map_err(torch("class weights"))?
        .index_select(0, &train.y);
    let n = train.len();
    let steps = ((n + opts.batch_size - 1) / opts.batch_size).max(1);
    let max_epochs = if val.is_empty() { (opts.max_epochs / 4).max(1) } else { opts.max_epochs };

    let mut best: Option<(f64, f64, Vec<Tensor>)> = None;
    let mut stale = 0;
    let mut epochs = 0;
    for epoch in 0..max_epochs {
        epochs = epoch + 1;
        for _ in 0..steps {
            let idx = weights.f_multinomial(opts.batch_size.min(n), true).map_err(torch("sampling"))?;
            let logits = train.x.index_select(0, &idx).apply_t(&net, true);
            let loss = logits.cross_entropy_for_logits(&train.y.index_select(0, &idx));
            opt.backward_step(&loss);
        }
        on_epoch(epoch);
        if val.is_empty() {
            continue;
        }
        let (loss, acc) = tch::no_grad(|| {
            let logits = val.x.apply_t(&net, false);
            let loss = logits.cross_entropy_for_logits(&val.y).double_value(&[]);
            let acc = logits.accuracy_for_logits(&val.y).double_value(&[]);
            (loss, acc)
        });
        if best.as_ref().is_none_or(|(b, _, _)| loss < *b - 1e-5) {
            let snapshot = vars.trainable_variables().iter().map(|t| t.detach().copy()).collect();
            best = Some((loss, acc, snapshot));
            stale = 0;
        } else {
            stale += 1;
            if stale >= opts.patience {
                break;
            }
        }
    }
    let (val_loss, val_accuracy) = match best {
        Some((loss, acc, snapshot)) => {
            tch::no_grad(|| {
                for (mut var, saved) in vars.trainable_variables().into_iter().zip(snapshot) {
                    var.copy_(&saved);
                }
            });
            (Some(loss), Some(acc))
        }
        None => (None, None),
    };
    Ok(Fitted { vars, val_accuracy, val_loss, epochs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_separable_classes_and_reports_validation() {
        tch::manual_seed(0);
        // Three Gaussian blobs in 16 dimensions, unbalanced 40/10/10.
        let centres = Tensor::randn([3, 16], (Kind::Float, Device::Cpu)) * 4.0;
        let make = |counts: &[i64]| {
            let y = Tensor::cat(
                &counts
                    .iter()
                    .enumerate()
                    .map(|(c, &n)| Tensor::full([n], c as i64, (Kind::Int64, Device::Cpu)))
                    .collect::<Vec<_>>(),
                0,
            );
            let x = centres.index_select(0, &y) + Tensor::randn([y.size()[0], 16], (Kind::Float, Device::Cpu));
            Split { x, y }
        };
        let train = make(&[40, 10, 10]);
        let val = make(&[10, 10, 10]);
        let opts = FitOptions { hidden: 16, max_epochs: 60, ..Default::default() };
        let fitted = fit(&train, &val, 3, &opts, 1, |_| {}).unwrap();
        let acc = fitted.val_accuracy.unwrap();
        assert!(acc >= 0.9, "validation accuracy {acc}");
        let names: Vec<String> = fitted.vars.variables().into_keys().collect();
        for n in crate::model::cascade::Mlp::NAMES {
            assert!(names.contains(&n.to_string()), "{names:?}");
        }
    }
}
