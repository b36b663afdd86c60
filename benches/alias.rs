//! The alias rewrite against a plain copy of the body (and of the spliced body, which the alias
//! makes longer), at the sizes a chat body takes: finding the top-level `model` (which routing
//! does for every request, alias or not), splicing the alias in, and both together. Serde's
//! reading of the `model` field, which routing used before the scanner, is measured beside them.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fxn_node::proxy::{model_of, splice};

const ALIAS: &[u8] = br#""llama3.1:8b-instruct-q4_K_M""#;

/// Message text with three escapes in 68 bytes, a worst case for the scanner's runs of plain bytes.
const ESCAPED_PROSE: &str = r#"The quick brown fox jumps over the \"lazy\" dog, again and again.\n"#;
/// Message text without escapes.
const PLAIN_PROSE: &str = "The quick brown fox jumps over the lazy dog, again and again and again. ";

/// A chat body of `size` bytes: `prose` repeated in its messages, a tool schema with a nested
/// `model`, and the top-level `model` last, as the openai SDK orders a `create` call's keys.
fn chat_body(size: usize, prose: &str) -> Vec<u8> {
    let head = r#"{"messages":[{"role":"system","content":"You are a helpful assistant.\nAnswer briefly."},{"role":"user","content":""#;
    let tail = r#""}],"tools":[{"type":"function","function":{"name":"pick","parameters":{"type":"object","properties":{"model":{"type":"string"}}}}}],"temperature":0.7,"stream":true,"model":"fxn/test-model"}"#;
    let mut body = head.as_bytes().to_vec();
    while body.len() + prose.len() + tail.len() <= size {
        body.extend_from_slice(prose.as_bytes());
    }
    body.resize(size - tail.len(), b' ');
    body.extend_from_slice(tail.as_bytes());
    body
}

#[derive(serde::Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

fn alias_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("alias_rewrite");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let sizes = [("1KiB", 1024), ("100KiB", 100 * 1024), ("5MiB", 5 * 1024 * 1024)];
    for ((size_name, size), (prose_name, prose)) in sizes
        .into_iter()
        .flat_map(|size| [("escaped", ESCAPED_PROSE), ("plain", PLAIN_PROSE)].map(|prose| (size, prose)))
    {
        let name = format!("{size_name}_{prose_name}");
        let body = Bytes::from(chat_body(size, prose));
        let span = model_of(&body).expect("a valid chat body").span;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("plain_copy", &name), &body, |b, body| {
            b.iter(|| Bytes::copy_from_slice(body))
        });
        // The splice's output is longer than the body by the alias; its allocation can cost more
        // than the body's (glibc serves up to 1032 bytes from its per-thread cache).
        let spliced = splice(&body, &[(span.clone(), ALIAS)]);
        group.bench_with_input(BenchmarkId::new("plain_copy_of_spliced", &name), &spliced, |b, spliced| {
            b.iter(|| Bytes::copy_from_slice(spliced))
        });
        group.bench_with_input(BenchmarkId::new("splice", &name), &body, |b, body| {
            b.iter(|| splice(body, &[(span.clone(), ALIAS)]))
        });
        group.bench_with_input(BenchmarkId::new("locate", &name), &body, |b, body| {
            b.iter(|| model_of(body).expect("a valid chat body").span)
        });
        group.bench_with_input(BenchmarkId::new("locate_and_splice", &name), &body, |b, body| {
            b.iter(|| {
                let span = model_of(body).expect("a valid chat body").span;
                splice(body, &[(span, ALIAS)])
            })
        });
        group.bench_with_input(BenchmarkId::new("serde_model_field", &name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<ModelOnly>(body).expect("a valid chat body").model.is_some())
        });
    }
    group.finish();
}

criterion_group!(benches, alias_rewrite);
criterion_main!(benches);
