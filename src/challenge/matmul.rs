//! MATRIX_MULTIPLICATION: the product of two matrices the scheduler sends (or of two random n×n
//! ones), its timing and a merkle root over its elements (PROTOCOL §3). Everything, the payload's
//! parsing included, runs on the blocking pool: a 2048² product keeps a core busy for a second.

use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Answer, Challenge, ChallengeError, Figures, Payload};

const NAME: &str = "MATRIX_MULTIPLICATION";
const SHAPE: &str = r#"an object {"A": [[…]], "B": [[…]]} (or "matrixA"/"matrixB", or {"size": n} for random n×n matrices), with optional "backend" and "precision""#;
const BACKENDS: &str = "cpu, auto, gpu, cuda, metal";
const PRECISIONS: &str = "fp64, fp32";
/// Products with every dimension up to this are sent back whole as `C`.
const C_MAX_DIM: usize = 100;
/// Elements one core formats for the merkle root at a time, and such chunks formatted at once.
const HASH_CHUNK: usize = 4096;
const HASH_WINDOW: usize = 16;

/// The challenge, with `challenge.matrixMaxDim`.
#[derive(Debug, Clone, Copy)]
pub struct MatrixMultiplication {
    max_dim: usize,
}

impl MatrixMultiplication {
    pub fn new(max_dim: usize) -> Self {
        Self { max_dim }
    }

    /// The whole challenge on the calling thread: the payload's parsing, the product, the answer.
    pub fn compute(&self, payload: &Payload) -> Result<Answer, ChallengeError> {
        let request: Request = payload.parse(NAME, SHAPE)?;
        let precision = request.precision()?;
        // Every backend runs on the CPU here; the value is checked so a typo is not silently taken.
        request.backend()?;
        let (a, b) = self.operands(&request)?;
        if a.cols != b.rows {
            return Err(ChallengeError::payload(
                NAME,
                format!(
                    "A is {}×{} and B is {}×{}: B must have as many rows as A has columns ({})",
                    a.rows, a.cols, b.rows, b.cols, a.cols
                ),
            ));
        }
        let (c, elapsed) = match precision {
            Precision::Fp64 => multiply(&a, &b),
            Precision::Fp32 => {
                let (c, elapsed) = multiply(&a.to_f32("A")?, &b.to_f32("B")?);
                (c.into_iter().map(f64::from).collect(), elapsed)
            }
        };
        if let Some(at) = c.iter().position(|v| !v.is_finite()) {
            return Err(ChallengeError::payload(
                NAME,
                format!(
                    "the product overflows: C[{}][{}] is not a finite number; expected elements small enough that \
                     their products' sums stay within ±1.8e308 (±3.4e38 in fp32)",
                    at / b.cols,
                    at % b.cols
                ),
            ));
        }
        Ok(answer(&a, &b, &c, elapsed))
    }

    /// A and B: random when `size` is given, else as sent.
    fn operands(&self, request: &Request) -> Result<(Matrix<f64>, Matrix<f64>), ChallengeError> {
        if let Some(size) = request.size {
            let n = serde_json::from_str::<u64>(size.get()).ok().filter(|&n| n > 0).ok_or_else(|| {
                ChallengeError::payload(NAME, format!("size must be a positive integer (the n of n×n); got {size}"))
            })?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > self.max_dim {
                return Err(self.too_large(&format!("size is {n}")));
            }
            return Ok(rayon::join(|| Matrix::random(n), || Matrix::random(n)));
        }
        // `A` is read when both it and `matrixA` are given (and `B` over `matrixB`).
        let missing = |name| ChallengeError::payload(NAME, format!("{name} is missing; expected {SHAPE}"));
        let a = request.a.or(request.matrix_a).ok_or_else(|| missing("A (or matrixA)"))?;
        let b = request.b.or(request.matrix_b).ok_or_else(|| missing("B (or matrixB)"))?;
        // Each operand is megabytes of numbers at the larger sizes.
        let (a, b) = rayon::join(|| self.parse_matrix("A", a), || self.parse_matrix("B", b));
        Ok((a?, b?))
    }

    fn parse_matrix(&self, name: &'static str, raw: &RawValue) -> Result<Matrix<f64>, ChallengeError> {
        // What a scheduler sends is plain rows of numbers, read here on every core; anything else
        // is read by serde, which names what is wrong with it.
        if let Some(matrix) = rows_of_numbers(raw.get(), self.max_dim) {
            return Ok(matrix);
        }
        let mut deserializer = serde_json::Deserializer::from_str(raw.get());
        let seed = MatrixSeed { max_dim: self.max_dim };
        let matrix = seed.deserialize(&mut deserializer).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ChallengeError::payload(NAME, format!("{name}: {e}")),
            _ => ChallengeError::payload(NAME, format!("{name}: {e}; expected an array of rows of numbers")),
        })?;
        if matrix.data.is_empty() {
            return Err(ChallengeError::payload(
                NAME,
                format!("{name} is empty; expected at least one row of at least one number"),
            ));
        }
        Ok(matrix)
    }

    fn too_large(&self, what: &str) -> ChallengeError {
        ChallengeError::payload(
            NAME,
            format!(
                "{what}, above this node's limit of {} (challenge.matrixMaxDim); expected every dimension at most {}",
                self.max_dim, self.max_dim
            ),
        )
    }
}

#[async_trait]
impl Challenge for MatrixMultiplication {
    fn name(&self) -> &'static str {
        NAME
    }

    fn bounded(&self) -> bool {
        true
    }

    async fn answer(&self, payload: Payload) -> Result<Answer, ChallengeError> {
        let challenge = *self;
        tokio::task::spawn_blocking(move || challenge.compute(&payload))
            .await
            .map_err(|e| ChallengeError::Internal(format!("the matrix product did not finish: {e}")))?
    }
}

/// The payload's fields; the operands stay raw text until they are read, on every core.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(rename = "A", borrow, default)]
    a: Option<&'a RawValue>,
    #[serde(rename = "matrixA", borrow, default)]
    matrix_a: Option<&'a RawValue>,
    #[serde(rename = "B", borrow, default)]
    b: Option<&'a RawValue>,
    #[serde(rename = "matrixB", borrow, default)]
    matrix_b: Option<&'a RawValue>,
    #[serde(borrow, default)]
    size: Option<&'a RawValue>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    precision: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Precision {
    Fp64,
    Fp32,
}

impl Request<'_> {
    fn backend(&self) -> Result<(), ChallengeError> {
        match self.backend.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("cpu" | "auto" | "gpu" | "cuda" | "metal") => Ok(()),
            Some(_) => Err(ChallengeError::payload(
                NAME,
                format!("backend {:?} is not one of {BACKENDS}", self.backend.as_deref().unwrap_or_default()),
            )),
        }
    }

    fn precision(&self) -> Result<Precision, ChallengeError> {
        match self.precision.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("fp64") => Ok(Precision::Fp64),
            Some("fp32") => Ok(Precision::Fp32),
            Some(_) => Err(ChallengeError::payload(
                NAME,
                format!("precision {:?} is not one of {PRECISIONS}", self.precision.as_deref().unwrap_or_default()),
            )),
        }
    }
}

/// A dense matrix, row-major.
#[derive(Debug, PartialEq)]
struct Matrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl Matrix<f64> {
    /// Elements uniform in [0, 1).
    fn random(n: usize) -> Self {
        // The operands need no secrecy, only speed: a small generator seeded from the thread's
        // makes them several times faster than the thread's own cryptographic one.
        let mut rng = SmallRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| SmallRng::from_entropy());
        Self { rows: n, cols: n, data: (0..n * n).map(|_| rng.gen()).collect() }
    }

    fn to_f32(&self, name: &str) -> Result<Matrix<f32>, ChallengeError> {
        let data: Vec<f32> = self.data.iter().map(|&v| v as f32).collect();
        if let Some(at) = data.iter().position(|v| !v.is_finite()) {
            return Err(ChallengeError::payload(
                NAME,
                format!(
                    "{name}[{}][{}] is {:e}, beyond fp32's ±3.4e38; expected smaller elements, or precision fp64",
                    at / self.cols,
                    at % self.cols,
                    self.data[at]
                ),
            ));
        }
        Ok(Matrix { rows: self.rows, cols: self.cols, data })
    }
}

/// `a · b` (row-major, as the operands) with faer on every core, and how long the product took.
fn multiply<T: faer::traits::ComplexField + Copy>(a: &Matrix<T>, b: &Matrix<T>) -> (Vec<T>, Duration) {
    let mut c = vec![T::zero_impl(); a.rows * b.cols];
    let started = Instant::now();
    matmul(
        MatMut::from_row_major_slice_mut(&mut c, a.rows, b.cols),
        Accum::Replace,
        MatRef::from_row_major_slice(&a.data, a.rows, a.cols),
        MatRef::from_row_major_slice(&b.data, b.rows, b.cols),
        T::one_impl(),
        Par::rayon(0),
    );
    (c, started.elapsed())
}

fn answer(a: &Matrix<f64>, b: &Matrix<f64>, c: &[f64], elapsed: Duration) -> Answer {
    let (rows, inner, cols) = (a.rows, a.cols, b.cols);
    let flops = 2 * rows as u64 * inner as u64 * cols as u64;
    let seconds = elapsed.as_secs_f64();
    let gflops = if seconds > 0.0 { flops as f64 / seconds / 1e9 } else { 0.0 };
    // A square product is named by its n, as `size` names it; any other by its shape.
    let square = (rows == cols).then_some(rows);
    let matrix_size = square.map_or_else(|| serde_json::json!(format!("{rows}x{cols}")), |n| serde_json::json!(n));
    let sample = |row: usize, col: usize| serde_json::json!({"row": row, "col": col, "value": c[row * cols + col]});
    let mut json = serde_json::json!({
        "matrixSize": matrix_size,
        "computationTimeMs": seconds * 1e3,
        "flops": flops,
        "gflops": gflops,
        "backend": "cpu",
        "device": "CPU",
        "merkleRoot": merkle_root(c),
        "resultSamples": [sample(0, 0), sample(rows / 2, cols / 2)],
        "deviceInfo": {"name": "CPU", "computeCapability": "N/A", "memoryGB": 0, "cudaCores": 0},
    });
    if rows.max(inner).max(cols) <= C_MAX_DIM {
        json["C"] = c.chunks(cols).collect::<Vec<_>>().into();
    }
    Answer { json, figures: Figures { matrix_size: square, gflops: Some(gflops), ttft: None } }
}

/// `0x` + hex sha256 over every element formatted `%.6f`, in order, with no separator. The hash
/// is sequential, so one core hashes a window's text while the pool formats the next; the text
/// of two windows (a few hundred KB each) is all that is held.
fn merkle_root(elements: &[f64]) -> String {
    let mut hasher = Sha256::new();
    let mut windows = elements.chunks(HASH_CHUNK * HASH_WINDOW);
    let mut texts = windows.next().map(fixed6_window).unwrap_or_default();
    for window in windows {
        let hashed = &mut hasher;
        let (_, next) = rayon::join(|| texts.iter().for_each(|text| hashed.update(text)), || fixed6_window(window));
        texts = next;
    }
    texts.iter().for_each(|text| hasher.update(text));
    format!("0x{}", hex::encode(hasher.finalize()))
}

/// One window's `%.6f` text, a chunk per core at a time.
fn fixed6_window(window: &[f64]) -> Vec<Vec<u8>> {
    window
        .par_chunks(HASH_CHUNK)
        .map(|chunk| {
            let mut text = Vec::with_capacity(chunk.len() * FIXED6_MAX + FIXED6_MAX);
            chunk.iter().for_each(|&value| push_fixed6(&mut text, value));
            text
        })
        .collect()
}

/// The longest text the integer path writes: a sign, 14 whole digits (millionths fit a u64),
/// the point and 6 decimals.
const FIXED6_MAX: usize = 22;

/// "00" to "99": the digits are written two at a time, halving the divisions.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                                  2021222324252627282930313233343536373839\
                                  4041424344454647484950515253545556575859\
                                  6061626364656667686970717273747576777879\
                                  8081828384858687888990919293949596979899";

/// Appends `value` as C's `%.6f` writes it (and Rust's `{:.6}`): the exact binary value rounded
/// half to even at the sixth decimal, the sign kept on values that round to zero. `format!` takes
/// about 90 ns an element, as long as a 1024² product; this, about 12.
fn push_fixed6(out: &mut Vec<u8>, value: f64) {
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    // value = mantissa · 2^exponent exactly.
    let (mantissa, exponent) = if biased == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased - 1075) };
    let Some(millionths) = millionths(mantissa, exponent) else {
        // From 2^52 up, whole numbers, and from about 1.8e13 the millionths overflow a u64: rare
        // in a product, and std writes them exactly (as it does inf and NaN, which the product
        // check keeps out).
        write!(out, "{value:.6}").expect("writing to a Vec cannot fail");
        return;
    };
    // Written back to front into one buffer, then appended at once.
    let mut text = [0u8; FIXED6_MAX];
    let pair = |at: usize| [DIGIT_PAIRS[at * 2], DIGIT_PAIRS[at * 2 + 1]];
    let decimals = (millionths % 1_000_000) as usize;
    let [d0, d1] = pair(decimals / 10_000);
    let [d2, d3] = pair(decimals / 100 % 100);
    let [d4, d5] = pair(decimals % 100);
    text[FIXED6_MAX - 7..].copy_from_slice(&[b'.', d0, d1, d2, d3, d4, d5]);
    let mut start = FIXED6_MAX - 7;
    let mut whole = millionths / 1_000_000;
    while whole >= 10 {
        start -= 2;
        text[start..start + 2].copy_from_slice(&pair((whole % 100) as usize));
        whole /= 100;
    }
    // One digit left, or none when the last pair was the first two.
    if whole > 0 || start == FIXED6_MAX - 7 {
        start -= 1;
        text[start] = b'0' + whole as u8;
    }
    if bits >> 63 == 1 {
        start -= 1;
        text[start] = b'-';
    }
    out.extend_from_slice(&text[start..]);
}

/// `mantissa · 2^exponent` in millionths, rounded half to even, when the value has a fraction
/// (`exponent < 0`) and the result fits a u64.
fn millionths(mantissa: u64, exponent: i32) -> Option<u64> {
    if exponent >= 0 {
        return None;
    }
    // mantissa · 10^6 < 2^73, so from a shift of 74 on the value is below half a millionth.
    let shift = exponent.unsigned_abs();
    if shift >= 74 {
        return Some(0);
    }
    let scaled = u128::from(mantissa) * 1_000_000;
    // Half to even without a branch (the remainder is as random as the product): adding half,
    // less one plus the quotient's low bit, carries into the quotient exactly when it rounds up.
    let low_bit = (scaled >> shift) & 1;
    let rounded = (scaled + (1 << (shift - 1)) - 1 + low_bit) >> shift;
    u64::try_from(rounded).ok()
}

/// `text` read as rows of numbers, a row per task, when that is all it holds and it is within
/// `max_dim`; `None` for anything else (another shape, a bound crossed, a number beyond f64),
/// which the serde reading then explains. `text` is valid JSON (serde read it as a raw value):
/// what is left to check is that it is arrays of numbers only, two deep, every row as long as
/// row 0.
fn rows_of_numbers(text: &str, max_dim: usize) -> Option<Matrix<f64>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    // A row's text runs from the `]` before it to its own: `,[a, b, …` (`[a, b, …` for row 0).
    // Without strings or objects (read_row refuses both), no `]` is anywhere else.
    let mut pieces: Vec<&str> = inner.par_split(']').collect();
    // What follows the last row's `]`.
    if !pieces.pop()?.trim_ascii().is_empty() || pieces.is_empty() || pieces.len() > max_dim {
        return None;
    }
    let mut first = Vec::new();
    read_row(pieces[0].as_bytes(), true, |value| (first.len() < max_dim).then(|| first.push(value)))?;
    let cols = first.len();
    let mut data = vec![0.0; pieces.len() * cols];
    data[..cols].copy_from_slice(&first);
    data[cols..].par_chunks_mut(cols).zip(&pieces[1..]).try_for_each(|(row, piece)| {
        let mut slots = row.iter_mut();
        read_row(piece.as_bytes(), false, |value| slots.next().map(|slot| *slot = value))?;
        slots.next().is_none().then_some(())
    })?;
    Some(Matrix { rows: pieces.len(), cols, data })
}

/// Hands each number of one row's text to `put`, or `None` at anything but numbers (or when
/// `put` refuses one more).
fn read_row(piece: &[u8], first: bool, mut put: impl FnMut(f64) -> Option<()>) -> Option<()> {
    let mut rest = piece.trim_ascii_start();
    if !first {
        rest = rest.strip_prefix(b",")?.trim_ascii_start();
    }
    rest = rest.strip_prefix(b"[")?;
    loop {
        rest = rest.trim_ascii_start();
        // The nearest f64 to the decimal text, as serde_json's float_roundtrip reads it.
        let (value, used): (f64, usize) = fast_float2::parse_partial(rest).ok()?;
        if !value.is_finite() {
            return None;
        }
        put(value)?;
        rest = rest[used..].trim_ascii_start();
        match rest.split_first() {
            None => return Some(()),
            Some((b',', after)) => rest = after,
            Some(_) => return None,
        }
    }
}

/// Reads one operand into a row-major [`Matrix`], checking its shape and bounds as it goes.
struct MatrixSeed {
    max_dim: usize,
}

impl<'de> DeserializeSeed<'de> for MatrixSeed {
    type Value = Matrix<f64>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MatrixSeed {
    type Value = Matrix<f64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of rows, each an array of numbers")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut rows: S) -> Result<Self::Value, S::Error> {
        let mut matrix = Matrix { rows: 0, cols: 0, data: Vec::new() };
        while rows.next_element_seed(RowSeed { matrix: &mut matrix, max_dim: self.max_dim })?.is_some() {
            if matrix.rows == self.max_dim {
                // One more row would be over the limit: say so before reading it.
                if rows.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "more than {} rows, above this node's limit of {} (challenge.matrixMaxDim)",
                        self.max_dim, self.max_dim
                    )));
                }
                break;
            }
        }
        Ok(matrix)
    }
}

struct RowSeed<'m> {
    matrix: &'m mut Matrix<f64>,
    max_dim: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "row {} as an array of numbers", self.matrix.rows)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut elements: S) -> Result<(), S::Error> {
        let matrix = self.matrix;
        let row = matrix.rows;
        // Row 0 sets the width; every later row must match it, and is stopped as soon as it cannot.
        let width = if row == 0 { self.max_dim } else { matrix.cols };
        let mut count = 0;
        while let Some(value) = elements.next_element_seed(Element { row, col: count })? {
            if count == width {
                return Err(de::Error::custom(if row == 0 {
                    format!(
                        "row 0 has more than {} elements, above this node's limit of {} (challenge.matrixMaxDim)",
                        self.max_dim, self.max_dim
                    )
                } else {
                    format!("row {row} has more than {width} elements; expected every row as long as row 0 ({width})")
                }));
            }
            matrix.data.push(value);
            count += 1;
        }
        if row == 0 {
            if count == 0 {
                return Err(de::Error::custom("row 0 is empty; expected at least one number a row"));
            }
            matrix.cols = count;
        } else if count != width {
            return Err(de::Error::custom(format!(
                "row {row} has {count} elements; expected every row as long as row 0 ({width})"
            )));
        }
        matrix.rows += 1;
        Ok(())
    }
}

/// One element: any finite JSON number.
struct Element {
    row: usize,
    col: usize,
}

impl<'de> DeserializeSeed<'de> for Element {
    type Value = f64;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_f64(self)
    }
}

impl<'de> Visitor<'de> for Element {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a finite number at [{}][{}]", self.row, self.col)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(E::custom(format!(
                "the element at [{}][{}] is beyond ±1.8e308; expected a finite number",
                self.row, self.col
            )))
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
        Ok(value as f64)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn compute(max_dim: usize, payload: &str) -> Result<Answer, ChallengeError> {
        MatrixMultiplication::new(max_dim).compute(&Payload::from_json(payload.to_owned()))
    }

    fn random_matrix(rows: usize, cols: usize, rng: &mut StdRng, integers: bool) -> Matrix<f64> {
        let data = (0..rows * cols)
            .map(|_| if integers { rng.gen_range(-20..=20) as f64 } else { rng.gen_range(-1.0..1.0) })
            .collect();
        Matrix { rows, cols, data }
    }

    fn naive(a: &Matrix<f64>, b: &Matrix<f64>) -> Vec<f64> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols).map(|t| a.data[i * a.cols + t] * b.data[t * b.cols + j]).sum();
            }
        }
        c
    }

    fn json_rows(m: &Matrix<f64>) -> String {
        serde_json::to_string(&m.data.chunks(m.cols).collect::<Vec<_>>()).unwrap()
    }

    /// The root built the plain way: std's formatting into one string, one hash.
    fn independent_root(elements: &[f64]) -> String {
        let text: String = elements.iter().map(|v| format!("{v:.6}")).collect();
        format!("0x{}", hex::encode(Sha256::digest(text.as_bytes())))
    }

    fn fixed6(value: f64) -> String {
        let mut out = Vec::new();
        push_fixed6(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed6_formats_exactly_as_std_does() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut values = vec![0.0, -0.0, 1e-7, -1e-7, 5e-7, -5e-7, 0.0000005, 2.5e-6, f64::MIN_POSITIVE, -5e-324];
        values.extend([f64::MAX, f64::MIN, 2f64.powi(74), 2f64.powi(75), 2f64.powi(128), 2f64.powi(53) + 2.0]);
        // Exact ties at the seventh decimal (k/128 = k·0.0078125) and the binary values nearest them.
        for k in 0..20_000i64 {
            for denominator in [128.0, 2f64.powi(20), 2f64.powi(27)] {
                let tie = k as f64 / denominator;
                values.extend([tie, -tie, f64::from_bits(tie.to_bits() + 1), f64::from_bits(tie.to_bits().max(1) - 1)]);
            }
        }
        // Any finite bit pattern: mostly tiny or huge.
        values.extend((0..500_000).map(|_| f64::from_bits(rng.gen())).filter(|v| v.is_finite()));
        // Every magnitude a product takes, both signs.
        values.extend((0..1_000_000).map(|_| {
            let magnitude = 10f64.powi(rng.gen_range(-12..40));
            rng.gen_range(-1.0..1.0) * magnitude
        }));
        for value in values {
            assert_eq!(fixed6(value), format!("{value:.6}"), "bits {:#x}", value.to_bits());
        }
    }

    #[test]
    fn rows_of_numbers_read_as_serde_does() {
        let serde_reading =
            |text: &str| MatrixSeed { max_dim: 64 }.deserialize(&mut serde_json::Deserializer::from_str(text));
        let mut rng = StdRng::seed_from_u64(7);
        // Halfway and near-halfway decimals, more digits than an f64 holds, integers past 2^53 and
        // u64, subnormals, underflow to zero, negative zero.
        let mut numbers: Vec<String> = [
            "0",
            "-0",
            "1",
            "-1",
            "0.1",
            "1e23",
            "-1E+2",
            "9007199254740993",
            "18446744073709551615",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "2.2250738585072011e-308",
            "5e-324",
            "1e-400",
            "-1e-400",
            "0.30000000000000001665334536937734810635447502136230468750000000001",
            "1.7976931348623157e308",
            "0.123456",
        ]
        .map(String::from)
        .to_vec();
        // Shortest round-trip texts of any finite f64, and longer ones of a product's magnitudes.
        numbers
            .extend((0..4000).map(|_| f64::from_bits(rng.gen())).filter(|v| v.is_finite()).map(|v| format!("{v:e}")));
        numbers.extend((0..2000).map(|_| format!("{:.20}", rng.gen::<f64>() * 1e3)));
        numbers.extend((0..2000).map(|_| format!("{:.6}", rng.gen::<f64>())));
        for (i, row) in numbers.chunks(40).enumerate() {
            let text =
                format!("[ [{}] ,\n[{}]\t]", row.join(", "), row.iter().rev().cloned().collect::<Vec<_>>().join(","));
            let fast = rows_of_numbers(&text, 64).unwrap_or_else(|| panic!("chunk {i}: {text}"));
            let slow = serde_reading(&text).unwrap();
            assert_eq!((fast.rows, fast.cols), (slow.rows, slow.cols));
            let bits = |m: &Matrix<f64>| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{text}");
        }
        // Anything but square rows of finite numbers within the bound is left to serde.
        for text in [
            "[]",
            "[[]]",
            "[[1],[]]",
            "[[1,2],[3]]",
            "[[1],[2,3]]",
            "[[[1]]]",
            "[[1,\"]\"]]",
            "[[null]]",
            "[1]",
            "[[1e400]]",
            "[{}]",
        ] {
            assert!(rows_of_numbers(text, 64).is_none(), "{text}");
        }
        assert!(rows_of_numbers(&format!("[[{}]]", ["1"; 65].join(",")), 64).is_none());
        assert!(rows_of_numbers(&format!("[{}]", ["[1]"; 65].join(",")), 64).is_none());
    }

    #[test]
    fn products_match_a_naive_triple_loop() {
        let mut rng = StdRng::seed_from_u64(1);
        for (rows, inner, cols) in [(1, 1, 1), (3, 5, 2), (1, 64, 1), (37, 64, 19), (130, 3, 101), (64, 200, 64)] {
            let (a, b) = (random_matrix(rows, inner, &mut rng, false), random_matrix(inner, cols, &mut rng, false));
            let (c, _) = multiply(&a, &b);
            for (got, want) in c.iter().zip(naive(&a, &b)) {
                assert!((got - want).abs() < 1e-12 * inner as f64, "{rows}×{inner}×{cols}: {got} against {want}");
            }
            let answer = compute(256, &format!(r#"{{"A": {}, "B": {}}}"#, json_rows(&a), json_rows(&b))).unwrap();
            assert_eq!(answer.json["merkleRoot"], independent_root(&c));
            if rows.max(inner).max(cols) <= C_MAX_DIM {
                assert_eq!(answer.json["C"], serde_json::json!(c.chunks(cols).collect::<Vec<_>>()));
            }
        }
    }

    #[test]
    fn the_merkle_root_is_over_each_element_at_six_decimals() {
        let answer = compute(8, r#"{"matrixA": [[1, -2], [0.5, 3]], "matrixB": [[0.25, 0], [-1e-9, 1]]}"#).unwrap();
        // C = [[0.25 + 2e-9, -2], [0.125 - 3e-9, 3]].
        let text = "0.250000-2.0000000.1250003.000000";
        assert_eq!(answer.json["merkleRoot"], format!("0x{}", hex::encode(Sha256::digest(text))));
        // Integer operands make the naive product exact: the root of a product too large to send.
        let mut rng = StdRng::seed_from_u64(2);
        let (a, b) = (random_matrix(120, 110, &mut rng, true), random_matrix(110, 130, &mut rng, true));
        let answer = compute(256, &format!(r#"{{"A": {}, "B": {}}}"#, json_rows(&a), json_rows(&b))).unwrap();
        assert_eq!(answer.json["merkleRoot"], independent_root(&naive(&a, &b)));
        assert!(answer.json.get("C").is_none());
    }

    #[test]
    fn the_answer_has_every_field_of_the_protocol() {
        let answer = compute(8, r#"{"A": [[1, 2, 3, 4]], "B": [[1], [2], [3], [4]], "backend": "GPU"}"#).unwrap();
        let json = &answer.json;
        assert_eq!(json["C"], serde_json::json!([[30.0]]));
        assert_eq!((&json["matrixSize"], &json["flops"]), (&serde_json::json!(1), &serde_json::json!(8)));
        assert_eq!((&json["backend"], &json["device"]), (&serde_json::json!("cpu"), &serde_json::json!("CPU")));
        assert_eq!(
            json["deviceInfo"],
            serde_json::json!({"name": "CPU", "computeCapability": "N/A", "memoryGB": 0, "cudaCores": 0})
        );
        assert!(json["computationTimeMs"].as_f64().unwrap() >= 0.0 && json["gflops"].as_f64().unwrap() >= 0.0);
        assert_eq!(answer.figures.matrix_size, Some(1));
        assert_eq!(answer.figures.gflops, json["gflops"].as_f64());
        let answer = compute(8, r#"{"A": [[1, 2], [3, 4], [5, 6]], "B": [[1, 0, 0, 1], [0, 1, 0, 1]]}"#).unwrap();
        assert_eq!(answer.json["matrixSize"], "3x4");
        assert_eq!(answer.figures.matrix_size, None);
        assert_eq!(
            answer.json["resultSamples"],
            serde_json::json!([{"row": 0, "col": 0, "value": 1.0}, {"row": 1, "col": 2, "value": 0.0}])
        );
    }

    #[test]
    fn fp32_multiplies_in_single_precision() {
        let answer = compute(8, r#"{"A": [[0.1, 0.2]], "B": [[0.3], [0.7]], "precision": "fp32"}"#).unwrap();
        let want = f64::from(0.1f32.mul_add(0.3, 0.2f32 * 0.7));
        let plain = f64::from(0.1f32 * 0.3 + 0.2f32 * 0.7);
        let got = answer.json["C"][0][0].as_f64().unwrap();
        assert!(got == want || got == plain, "{got}");
        let fp64 = compute(8, r#"{"A": [[0.1, 0.2]], "B": [[0.3], [0.7]], "precision": "fp64"}"#).unwrap();
        assert_eq!(fp64.json["C"][0][0], 0.1 * 0.3 + 0.2 * 0.7);
    }

    #[test]
    fn size_wins_over_matrices() {
        let answer = compute(8, r#"{"size": 3, "A": [[1]], "B": "not a matrix"}"#).unwrap();
        let c = answer.json["C"].as_array().unwrap();
        assert_eq!(
            (c.len(), &answer.json["matrixSize"], &answer.json["flops"]),
            (3, &serde_json::json!(3), &serde_json::json!(54))
        );
        for value in c.iter().flat_map(|row| row.as_array().unwrap()) {
            // Sums of three products of numbers in [0, 1).
            assert!((0.0..3.0).contains(&value.as_f64().unwrap()), "{value}");
        }
    }

    #[test]
    fn c_is_sent_up_to_100_only() {
        let answer = compute(2048, r#"{"size": 100}"#).unwrap();
        assert_eq!(answer.json["C"].as_array().unwrap().len(), 100);
        let answer = compute(2048, r#"{"size": 101}"#).unwrap();
        assert!(answer.json.get("C").is_none());
        assert_eq!(answer.json["resultSamples"][1]["row"], 50);
        // Any dimension above 100 withholds it, the inner one too.
        let a = format!("[[{}]]", ["1"; 101].join(","));
        let b = format!("[{}]", ["[1]"; 101].join(","));
        let answer = compute(2048, &format!(r#"{{"A": {a}, "B": {b}}}"#)).unwrap();
        assert!(answer.json.get("C").is_none());
    }

    #[test]
    fn every_bad_payload_is_refused_with_what_was_expected() {
        let long_row = format!("[[{}]]", ["1"; 9].join(","));
        let tall = format!("[{}]", ["[1]"; 9].join(","));
        let cases = [
            ("5", "expected an object"),
            ("null", "expected an object"),
            ("[[1]]", "expected an object"),
            ("{}", "A (or matrixA) is missing"),
            (r#"{"B": [[1]]}"#, "A (or matrixA) is missing"),
            (r#"{"A": [[1]]}"#, "B (or matrixB) is missing"),
            (r#"{"A": [[1]], "B": null}"#, "B (or matrixB) is missing"),
            (r#"{"size": 0}"#, "size must be a positive integer"),
            (r#"{"size": -3}"#, "size must be a positive integer"),
            (r#"{"size": 1.5}"#, "size must be a positive integer"),
            (r#"{"size": "4"}"#, "size must be a positive integer"),
            (r#"{"size": 1e30}"#, "size must be a positive integer"),
            (r#"{"size": 9}"#, "size is 9, above this node's limit of 8 (challenge.matrixMaxDim)"),
            (r#"{"size": 18446744073709551615}"#, "limit of 8 (challenge.matrixMaxDim)"),
            (&format!(r#"{{"A": {tall}, "B": [[1]]}}"#), "more than 8 rows, above this node's limit of 8"),
            (&format!(r#"{{"A": [[1]], "B": {long_row}}}"#), "B: row 0 has more than 8 elements"),
            (r#"{"A": [[1, 2], [3]], "B": [[1]]}"#, "A: row 1 has 1 elements; expected every row as long as row 0 (2)"),
            (r#"{"A": [[1], [2, 3]], "B": [[1]]}"#, "A: row 1 has more than 1 elements"),
            (
                r#"{"A": [[1, 2]], "B": [[1, 2]]}"#,
                "A is 1×2 and B is 1×2: B must have as many rows as A has columns (2)",
            ),
            (r#"{"A": [], "B": [[1]]}"#, "A is empty"),
            (r#"{"A": [[1]], "B": [[]]}"#, "B: row 0 is empty"),
            (r#"{"A": [["1"]], "B": [[1]]}"#, "A: invalid type: string \"1\", expected a finite number at [0][0]"),
            (r#"{"A": [[1, true]], "B": [[1]]}"#, "expected a finite number at [0][1]"),
            (r#"{"A": [[1], [null]], "B": [[1]]}"#, "expected a finite number at [1][0]"),
            (r#"{"A": [1, 2], "B": [[1]]}"#, "expected row 0 as an array of numbers"),
            (r#"{"A": [[1, "]"]], "B": [[1]]}"#, "A: invalid type: string \"]\", expected a finite number at [0][1]"),
            (r#"{"A": [[[1]]], "B": [[1]]}"#, "A: invalid type: sequence, expected a finite number at [0][0]"),
            (r#"{"A": {"rows": 1}, "B": [[1]]}"#, "expected an array of rows, each an array of numbers"),
            (r#"{"A": "[[1]]", "B": [[1]]}"#, "expected an array of rows"),
            (r#"{"A": [[1e400]], "B": [[1]]}"#, "A: number out of range"),
            (r#"{"A": [[-1e400]], "B": [[1]]}"#, "A: number out of range"),
            (r#"{"A": [[1e200]], "B": [[1e200]]}"#, "the product overflows: C[0][0] is not a finite number"),
            (r#"{"A": [[1e300, 1e300]], "B": [[1e8], [1e8]]}"#, "the product overflows"),
            (r#"{"A": [[1e39]], "B": [[1]], "precision": "fp32"}"#, "A[0][0] is 1e39, beyond fp32's ±3.4e38"),
            (r#"{"A": [[1e20]], "B": [[1e20]], "precision": "fp32"}"#, "the product overflows"),
            (r#"{"size": 2, "backend": "tpu"}"#, "backend \"tpu\" is not one of cpu, auto, gpu, cuda, metal"),
            (r#"{"size": 2, "backend": 5}"#, "expected a string"),
            (r#"{"size": 2, "precision": "fp16"}"#, "precision \"fp16\" is not one of fp64, fp32"),
            (r#"{"size": 2, "size": 3}"#, "duplicate field `size`"),
            (r#"{"A": [[1]], "B": [[1]]"#, "EOF"),
        ];
        for (payload, reason) in cases {
            match compute(8, payload) {
                Err(error @ ChallengeError::InvalidPayload { challenge: NAME, .. }) => {
                    assert!(error.to_string().contains(reason), "{payload}: {error}")
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_python_check_agrees() {
        let mut rng = StdRng::seed_from_u64(3);
        // Integers: the product and the root exact, with C sent and without.
        for (rows, inner, cols, integers) in [(7, 5, 6, true), (101, 7, 103, true), (9, 8, 7, false)] {
            let (a, b) =
                (random_matrix(rows, inner, &mut rng, integers), random_matrix(inner, cols, &mut rng, integers));
            let (a_json, b_json) = if integers {
                let ints = |m: &Matrix<f64>| m.data.iter().map(|&v| v as i64).collect::<Vec<_>>();
                let rows_of =
                    |m: &Matrix<f64>| serde_json::to_string(&ints(m).chunks(m.cols).collect::<Vec<_>>()).unwrap();
                (rows_of(&a), rows_of(&b))
            } else {
                (json_rows(&a), json_rows(&b))
            };
            let answer = compute(256, &format!(r#"{{"A": {a_json}, "B": {b_json}}}"#)).unwrap();
            let case = format!(r#"{{"A": {a_json}, "B": {b_json}, "answer": {}}}"#, answer.json);
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), case).unwrap();
            let output = std::process::Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/matmul_check.py"))
                .arg(file.path())
                .output()
                .expect("python3");
            assert!(output.status.success(), "{rows}×{inner}×{cols}: {}", String::from_utf8_lossy(&output.stderr));
        }
    }

    #[tokio::test]
    async fn the_challenge_answers_off_the_async_threads() {
        let challenge = MatrixMultiplication::new(8);
        assert!(challenge.bounded());
        let answer = challenge.answer(Payload::from_json(r#"{"A": [[2]], "B": [[3]]}"#)).await.unwrap();
        assert_eq!(answer.json["C"], serde_json::json!([[6.0]]));
        let error = challenge.answer(Payload::from_json("null")).await.unwrap_err();
        assert!(matches!(error, ChallengeError::InvalidPayload { .. }), "{error}");
    }
}
