//! V2 JSON decode and encode speed: a ResNet-sized image input (1×3×224×224 FP32, about 1.1 MB
//! of JSON at three decimals) read by the fast JSON reader and by the reference decoder
//! (serde_json `Value`s, then flattened), flat and nested, and spelt at full precision as
//! `numpy.float32(...).tolist()` spells it; and 150 528 f32 outputs written as JSON. Throughput is
//! in bytes of JSON.
//!
//! `cargo bench -p nimify --bench json_codec` (part of `cargo xtask bench serve`).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nimify::__bench::{typed_decode, v2_decode, v2_encode_json};
use nimify_model::ElementType;

const SHAPE: [usize; 4] = [1, 3, 224, 224];

/// A typed route's input: 672 rows of 224 pixels.
#[derive(serde::Deserialize)]
struct TypedImage {
    #[allow(dead_code)]
    image: Vec<Vec<f32>>,
}

/// Pixel values as a normalised image has them (about -2.1 to 2.6), from a fixed generator.
fn pixels() -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..SHAPE.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.7 - 2.1
        })
        .collect()
}

/// A V2 request with `data` spelt by `spell`, flat or nested as the shape.
fn body(pixels: &[f32], nested: bool, spell: impl Fn(f32) -> String) -> Bytes {
    let items: Vec<String> = pixels.iter().map(|&x| spell(x)).collect();
    let data = if nested {
        let rows: Vec<String> = items.chunks(SHAPE[3]).map(|r| format!("[{}]", r.join(", "))).collect();
        let planes: Vec<String> = rows.chunks(SHAPE[2]).map(|p| format!("[{}]", p.join(", "))).collect();
        format!("[[{}]]", planes.join(", "))
    } else {
        format!("[{}]", items.join(", "))
    };
    Bytes::from(format!(
        r#"{{"inputs": [{{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": {data}}}]}}"#
    ))
}

fn json_codec(c: &mut Criterion) {
    let spec = ("image", ElementType::Float);
    let pixels = pixels();
    let bodies = [
        ("flat, 3 decimals", body(&pixels, false, |x| format!("{x:.3}"))),
        ("nested, 3 decimals", body(&pixels, true, |x| format!("{x:.3}"))),
        ("flat, float32 tolist", body(&pixels, false, |x| format!("{:?}", f64::from(x)))),
    ];
    let mut group = c.benchmark_group("v2 json decode");
    group.sample_size(20);
    for (label, body) in &bodies {
        assert_eq!(v2_decode(spec.0, spec.1, body, true), Ok(pixels.len()), "{label}");
        eprintln!("{label}: {:.2} MB", body.len() as f64 / 1e6);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("fast, {label}"), |b| b.iter(|| v2_decode(spec.0, spec.1, black_box(body), true)));
        group.bench_function(format!("reference, {label}"), |b| {
            b.iter(|| v2_decode(spec.0, spec.1, black_box(body), false))
        });
    }
    group.finish();
    // A small model's request (the bench MLP's 2 x 4), where the fields around the data cost
    // as much as the data: per request, not per byte.
    let small = Bytes::from_static(
        br#"{"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.5, -1.25, 3.0, 0.125, 2.5, -0.75, 1.0, 4.0]}]}"#,
    );
    let mut group = c.benchmark_group("v2 json decode, small request");
    assert_eq!(v2_decode("x", ElementType::Float, &small, true), Ok(8));
    group.bench_function("fast", |b| b.iter(|| v2_decode("x", ElementType::Float, black_box(&small), true)));
    group.bench_function("reference", |b| b.iter(|| v2_decode("x", ElementType::Float, black_box(&small), false)));
    group.finish();
    // A typed route's body: the same pixels as rows of 224 under a field name, read into the
    // Rust type (as `#[nimify]` services declare their inputs).
    let rows: Vec<String> = pixels
        .chunks(SHAPE[3])
        .map(|r| format!("[{}]", r.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ")))
        .collect();
    let typed = format!("{{\"image\": [{}]}}", rows.join(", "));
    let mut group = c.benchmark_group("typed json decode");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(typed.len() as u64));
    group.bench_function("straight into the type", |b| {
        b.iter(|| typed_decode::<TypedImage>(black_box(typed.as_bytes()), false).expect("decodes"))
    });
    group.bench_function("serde_json alone", |b| {
        b.iter(|| serde_json::from_slice::<TypedImage>(black_box(typed.as_bytes())).expect("decodes"))
    });
    group.bench_function("every path tracked", |b| {
        b.iter(|| typed_decode::<TypedImage>(black_box(typed.as_bytes()), true).expect("decodes"))
    });
    group.finish();
    let mut group = c.benchmark_group("v2 json encode");
    group.sample_size(20);
    let bytes = v2_encode_json(pixels.clone());
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("150528 f32", |b| b.iter(|| v2_encode_json(black_box(pixels.clone()))));
    group.finish();
}

criterion_group!(benches, json_codec);
criterion_main!(benches);
