//! MATRIX_MULTIPLICATION against faer's multiply alone, at n = 256, 512, 1024: the product of two
//! prepared n×n matrices on one core and on all (the baseline), then the challenge's whole work
//! on a `{"size": n}` payload (random operands, product, merkle root, answer) and on an explicit
//! `{"A": …, "B": …}` payload of 6-decimal numbers (the JSON parsing added). See MATMUL.md.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use fxn_node::challenge::{MatrixMultiplication, Payload};
use rand::Rng;

/// An n×n operand as JSON rows of numbers in [0, 1) with 6 decimals, as a scheduler sends them.
fn json_matrix(n: usize, rng: &mut impl Rng) -> String {
    let rows: Vec<String> = (0..n)
        .map(|_| {
            let row: Vec<String> = (0..n).map(|_| format!("{:.6}", rng.gen::<f64>())).collect();
            format!("[{}]", row.join(","))
        })
        .collect();
    format!("[{}]", rows.join(","))
}

fn matrix_multiplication(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let challenge = MatrixMultiplication::new(2048);
    let mut rng = rand::thread_rng();
    for n in [256, 512, 1024] {
        let a = Mat::<f64>::from_fn(n, n, |_, _| rng.gen());
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.gen());
        let mut product = Mat::<f64>::zeros(n, n);
        for (name, par) in [("faer_seq", Par::Seq), ("faer_rayon", Par::rayon(0))] {
            group.bench_function(BenchmarkId::new(name, n), |bench| {
                bench.iter(|| matmul(&mut product, Accum::Replace, &a, &b, 1.0, par))
            });
        }
        let sized = Payload::from_json(format!(r#"{{"size": {n}}}"#));
        group.bench_function(BenchmarkId::new("compute_size", n), |bench| {
            bench.iter(|| challenge.compute(&sized).expect("a valid payload"))
        });
        let explicit =
            Payload::from_json(format!(r#"{{"A": {}, "B": {}}}"#, json_matrix(n, &mut rng), json_matrix(n, &mut rng)));
        group.bench_function(BenchmarkId::new("compute_json", n), |bench| {
            bench.iter(|| challenge.compute(&explicit).expect("a valid payload"))
        });
    }
    group.finish();
}

criterion_group!(benches, matrix_multiplication);
criterion_main!(benches);
