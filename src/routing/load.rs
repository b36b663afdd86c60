//! `backend_load`: how busy a backend says it is, read from its own Prometheus page. vLLM
//! reports `vllm:num_requests_waiting` and `vllm:num_requests_running`, SGLang
//! `sglang:num_queue_reqs` and `sglang:num_running_reqs`; their sum over every series (one per
//! model a server holds) is the backend's load. The names carry colons, which the text-format
//! crate at hand (`prometheus-parse`) does not read, hence the few lines here.

/// The gauges whose sum is a backend's load: requests queued and running.
const LOAD_GAUGES: &[&str] =
    &["vllm:num_requests_waiting", "vllm:num_requests_running", "sglang:num_queue_reqs", "sglang:num_running_reqs"];

/// The load a metrics page reports; `None` when it has none of [`LOAD_GAUGES`].
pub fn reported_load(page: &str) -> Option<u64> {
    let mut total = None;
    for line in page.lines().map(str::trim_start).filter(|line| !line.starts_with('#')) {
        let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace()).unwrap_or(line.len());
        if !LOAD_GAUGES.contains(&&line[..name_end]) {
            continue;
        }
        // The value follows the labels (which may hold spaces inside quotes) and precedes an
        // optional timestamp.
        let after_labels = match line[name_end..].strip_prefix('{') {
            Some(labels) => labels.rfind('}').map(|end| &labels[end + 1..]),
            None => Some(&line[name_end..]),
        };
        let value = after_labels.and_then(|rest| rest.split_ascii_whitespace().next()?.parse::<f64>().ok());
        if let Some(value) = value.filter(|v| v.is_finite() && *v >= 0.0) {
            *total.get_or_insert(0) += value.round() as u64;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_and_sglang_pages_are_read() {
        let vllm = "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B\"} 3.0\n\
                    vllm:num_requests_waiting{engine=\"0\",model_name=\"a {b} c\"} 7.0 1712345678000\n\
                    vllm:num_requests_swapped{model_name=\"x\"} 100.0\n\
                    vllm:num_requests_running_total 900\n";
        assert_eq!(reported_load(vllm), Some(10));
        let sglang = "sglang:num_queue_reqs 2\nsglang:num_running_reqs{tp_rank=\"0\"} 5\n";
        assert_eq!(reported_load(sglang), Some(7));
    }

    #[test]
    fn a_page_without_load_gauges_or_with_bad_values_reports_none_of_them() {
        assert_eq!(reported_load("process_cpu_seconds_total 4\n# vllm:num_requests_waiting 9\n"), None);
        assert_eq!(reported_load(""), None);
        assert_eq!(reported_load("vllm:num_requests_waiting NaN\nvllm:num_requests_running -1\n"), None);
        assert_eq!(reported_load("vllm:num_requests_waiting{unclosed=\"1\" 5\nvllm:num_requests_running 2\n"), Some(2));
    }
}
