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

fn hint(mut e: candle_core::Error, feature: &str) -> String {
    // candle attaches a captured backtrace to device errors; a user needs the reason.
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = *inner;
    }
    let msg = e.to_string();
    if msg.contains("CUDA_ERROR_NO_DEVICE") {
        return "no CUDA-capable GPU is visible to this process (check the driver, \
                `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
            .into();
    }
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

    #[test]
    fn device_errors_lose_their_backtrace() {
        let inner = candle_core::Error::Msg("no such device".into());
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(hint(e, "cuda"), "no such device");
    }
}
