//! `#[derive(mlx::Module)]`: paths, rebuilding, loading with a full report of what does not
//! fit, parameter counts, and the structure key.

use mlx::io::Checkpoint;
use mlx::module::LoadReport;
use mlx::{Array, Dtype, Error, Module};

#[derive(Module, Clone)]
struct Linear {
    weight: Array,
    bias: Option<Array>,
}

impl Linear {
    fn new(out: i32, inp: i32, bias: bool) -> Linear {
        Linear {
            weight: Array::zeros(&[out, inp], Dtype::F32),
            bias: bias.then(|| Array::zeros(&[out], Dtype::F32)),
        }
    }
}

#[derive(Module, Clone)]
struct QuantizedLinear {
    weight: Array,
    scales: Array,
}

#[derive(Module, Clone)]
enum Layer {
    Dense(Linear),
    Quantized(QuantizedLinear),
}

#[derive(Module, Clone)]
struct Attention {
    to_q: Linear,
    #[weight("to_out.0")]
    to_out: Linear,
    #[weight(skip)]
    heads: i32,
}

#[derive(Module, Clone)]
struct Block {
    attention: Attention,
    norm: Array,
    layers: Vec<Layer>,
    #[weight(skip)]
    eps: f32,
}

fn block() -> Block {
    Block {
        attention: Attention {
            to_q: Linear::new(4, 4, true),
            to_out: Linear::new(4, 4, false),
            heads: 2,
        },
        norm: Array::ones(&[4], Dtype::F32),
        layers: vec![
            Layer::Dense(Linear::new(8, 4, true)),
            Layer::Quantized(QuantizedLinear {
                weight: Array::zeros(&[4, 2], Dtype::U32),
                scales: Array::zeros(&[4, 1], Dtype::F32),
            }),
        ],
        eps: 1e-6,
    }
}

const PATHS: [&str; 8] = [
    "attention.to_q.weight",
    "attention.to_q.bias",
    "attention.to_out.0.weight",
    "norm",
    "layers.0.weight",
    "layers.0.bias",
    "layers.1.weight",
    "layers.1.scales",
];

#[test]
fn parameters_have_checkpoint_paths_in_field_order() {
    let b = block();
    let paths: Vec<String> = b.parameters().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, PATHS);
    assert_eq!(b.num_parameters(), 16 + 4 + 16 + 4 + 32 + 8 + 8 + 4);
    assert_eq!(b.nbytes(), (16 + 4 + 16 + 4 + 32 + 8 + 4) * 4 + 8 * 4);
}

#[test]
fn rebuild_substitutes_arrays_in_visit_order() {
    let b = block();
    let replacements: Vec<Array> = (0..PATHS.len())
        .map(|i| Array::full(&[1], i as f32, Dtype::F32))
        .collect();
    let rebuilt = b.rebuild(&mut replacements.into_iter());
    for (i, (path, array)) in rebuilt.parameters().into_iter().enumerate() {
        assert_eq!(array.to_vec::<f32>().unwrap(), vec![i as f32], "{path}");
    }
    assert_eq!(rebuilt.attention.heads, 2, "configuration is kept");
    assert_eq!(rebuilt.eps, 1e-6);
    // Running out of arrays gives failed arrays, not a panic.
    let short = b.rebuild(&mut std::iter::empty());
    assert!(short.norm.error().is_some());
}

#[test]
fn loading_takes_every_tensor_and_casts_to_the_module_dtype() {
    let mut b = block();
    let tensors = b.parameters().into_iter().map(|(path, a)| {
        let value = if a.dtype() == Dtype::U32 {
            Array::ones(a.shape(), Dtype::U32)
        } else {
            Array::full(a.shape(), 0.5, Dtype::Bf16)
        };
        (path, value)
    });
    let checkpoint = Checkpoint::from_arrays(tensors.collect::<Vec<_>>());
    b.load(checkpoint).unwrap();
    assert_eq!(b.norm.dtype(), Dtype::F32);
    assert_eq!(b.norm.to_vec::<f32>().unwrap(), vec![0.5; 4]);
    match &b.layers[1] {
        Layer::Quantized(q) => assert_eq!(q.weight.to_vec::<u32>().unwrap(), vec![1; 8]),
        Layer::Dense(_) => panic!("variant changed"),
    }
}

#[test]
fn loading_reports_every_problem_at_once() {
    let mut b = block();
    let mut tensors: Vec<(String, Array)> = b
        .parameters()
        .into_iter()
        .map(|(path, a)| (path, Array::zeros(a.shape(), a.dtype())))
        .collect();
    tensors.retain(|(p, _)| p != "attention.to_q.bias" && p != "layers.1.scales");
    tensors.push((
        "attention.to_k.weight".into(),
        Array::zeros(&[4, 4], Dtype::F32),
    ));
    for (p, a) in &mut tensors {
        if p == "norm" {
            *a = Array::zeros(&[5], Dtype::F32);
        }
    }
    let err = b.load(Checkpoint::from_arrays(tensors)).unwrap_err();
    let Error::Load(report) = &err else {
        panic!("expected a load report, got {err}");
    };
    assert_eq!(
        report,
        &LoadReport {
            missing: vec!["attention.to_q.bias".into(), "layers.1.scales".into()],
            unexpected: vec!["attention.to_k.weight".into()],
            mismatched: vec![("norm".into(), vec![4], vec![5])],
            wrongly_stored: vec![],
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("2 missing: attention.to_q.bias, layers.1.scales; 1 unexpected: attention.to_k.weight; 1 wrongly shaped: norm (expected [4], found [5])"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn the_structure_key_covers_configuration_lengths_and_variants() {
    let key = |b: &Block| {
        let mut s = String::new();
        b.structure(&mut s);
        s
    };
    let base = key(&block());
    let mut other_heads = block();
    other_heads.attention.heads = 4;
    assert_ne!(key(&other_heads), base);
    let mut fewer_layers = block();
    fewer_layers.layers.pop();
    assert_ne!(key(&fewer_layers), base);
    let mut other_variant = block();
    other_variant.layers[1] = Layer::Dense(Linear::new(4, 4, false));
    assert_ne!(key(&other_variant), base);
    let mut no_bias = block();
    no_bias.attention.to_q.bias = None;
    assert_ne!(key(&no_bias), base);
    // Different weights, same structure.
    let mut other_weights = block();
    other_weights.norm = Array::full(&[4], 3.0, Dtype::F32);
    assert_eq!(key(&other_weights), base);
}

#[derive(Module)]
struct Pair(Array, #[weight("b")] Array, #[weight(skip)] usize);

#[test]
fn tuple_structs_use_indices_or_given_names() {
    let p = Pair(
        Array::zeros(&[1], Dtype::F32),
        Array::zeros(&[2], Dtype::F32),
        3,
    );
    let paths: Vec<String> = p.parameters().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, ["0", "b"]);
}
