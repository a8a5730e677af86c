//! Choosing where the weights live: `--device cpu|cuda[:N]|metal`.

use candle_core::Device;

use super::error::{Error, Result};

/// Parses a device name and opens the device. CUDA and Metal need the matching cargo
/// feature; without it the error says which feature to build with.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let unavailable = |why: String| Error::Device(spec.clone(), why);
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(|e| unavailable(hint(e, "metal"))),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| unavailable("expected cuda:N with N a GPU number".into()))?,
            };
            Device::new_cuda(ordinal).map_err(|e| unavailable(hint(e, "cuda")))
        }
        _ => Err(unavailable("expected cpu, cuda, cuda:N or metal".into())),
    }
}

fn hint(e: candle_core::Error, feature: &str) -> String {
    let msg = e.to_string();
    if msg.contains("not compiled") || msg.contains("feature") {
        format!("this build has no {feature} support; rebuild with `--features {feature}`")
    } else {
        msg
    }
}

/// A short name for reports (llama-bench's `backend` column).
pub fn backend_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "CPU",
        Device::Cuda(_) => "CUDA",
        Device::Metal(_) => "Metal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_nonsense_is_rejected() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(
            parse_device("tpu")
                .unwrap_err()
                .to_string()
                .contains("expected cpu")
        );
        assert!(parse_device("cuda:x").is_err());
    }
}
