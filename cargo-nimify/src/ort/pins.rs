//! The ONNX Runtime builds `cargo nimify ort install` accepts: per platform, the official
//! `onnxruntime` wheel on the Python package index, and the libraries taken out of it, each with
//! its size and sha256.
//!
//! The wheels of one release for different Python versions carry byte-identical libraries, so a
//! library is verified by its own hash, whichever wheel (or archive) it comes from; the wheel's
//! hash verifies a download before it is opened. `listings/` holds what `cargo xtask
//! ort-listings` found in the wheels; a test checks every pin against it.

use nimify::__private::ortlib::{ORT_VERSION, platform_name};

/// One file installed from a wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedFile {
    /// Its path inside the wheel.
    pub member: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lowercase hex.
    pub sha256: &'static str,
}

impl PinnedFile {
    /// The file name it is installed under (the last part of its path in the wheel).
    pub fn name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }
}

/// The pinned ONNX Runtime of one platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// The platform as OCI images name it: `linux/amd64`.
    pub platform: &'static str,
    /// The wheel's file name on the package index.
    pub wheel: &'static str,
    /// The wheel's size in bytes.
    pub wheel_size: u64,
    /// The wheel's sha256, lowercase hex.
    pub wheel_sha256: &'static str,
    /// What is installed: the ONNX Runtime library first, then the libraries it loads beside it.
    pub files: &'static [PinnedFile],
}

impl Pin {
    /// The ONNX Runtime library itself.
    pub fn library(&self) -> &'static PinnedFile {
        &self.files[0]
    }
}

/// Every pinned platform. The Python tag (cp311) only picks one of identical copies.
pub const PINS: &[Pin] = &[
    Pin {
        platform: "linux/amd64",
        wheel: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        wheel_size: 27_773_237,
        wheel_sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
        files: &[
            PinnedFile {
                member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
                size: 34_824_680,
                sha256: "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
            },
            PinnedFile {
                member: "onnxruntime/capi/libonnxruntime_providers_shared.so",
                size: 14_632,
                sha256: "8ef51f6bf2c621fc129f625b22241fa6f9a5870bc08eaf2fdd279169ec40d09a",
            },
        ],
    },
    Pin {
        platform: "linux/arm64",
        wheel: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl",
        wheel_size: 23_195_070,
        wheel_sha256: "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
        files: &[
            PinnedFile {
                member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
                size: 27_165_936,
                sha256: "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a",
            },
            PinnedFile {
                member: "onnxruntime/capi/libonnxruntime_providers_shared.so",
                size: 198_792,
                sha256: "f91fa2b0a2b8dba9cbc319254d342fa8201fd94b5912b9ce717f82e2207ee3d5",
            },
        ],
    },
    Pin {
        platform: "darwin/arm64",
        wheel: "onnxruntime-1.32.0-cp311-cp311-macosx_14_0_arm64.whl",
        wheel_size: 22_506_162,
        wheel_sha256: "366b9e53d07812cc5c92822cecf7563b76a8a0f32ba3bb8dd232a206ac3bcb6c",
        files: &[PinnedFile {
            member: "onnxruntime/capi/libonnxruntime.1.32.0.dylib",
            size: 35_272_344,
            sha256: "fa585fabbea65b823b9a8f7e27d46aee3989d1be7e36b528203d3a1fd613aae7",
        }],
    },
    Pin {
        platform: "windows/amd64",
        wheel: "onnxruntime-1.32.0-cp311-cp311-win_amd64.whl",
        wheel_size: 16_695_880,
        wheel_sha256: "d7e0c45cc5f456ad7805e6dd256a7662736cda9c2fd17becae194eb3c2f6df72",
        files: &[
            PinnedFile {
                member: "onnxruntime/capi/onnxruntime.dll",
                size: 22_668_640,
                sha256: "e9feebaed867b76f741c14ae64e056a3da64a153a61994f1fb48eadc7f9b3ba8",
            },
            PinnedFile {
                member: "onnxruntime/capi/onnxruntime_providers_shared.dll",
                size: 21_816,
                sha256: "f5d764608b85d8715bceb373517ca7fe48d214b47f3bab8937e3ce6661c86572",
            },
        ],
    },
];

/// The pin of a platform given as `linux/amd64` (OCI), `linux/x86_64` or a Rust target triple
/// (`aarch64-unknown-linux-gnu`); an error names the pinned platforms.
pub fn find(platform: &str) -> Result<&'static Pin, String> {
    let wanted = normalize(platform);
    if let Some(pin) = PINS.iter().find(|p| p.platform == wanted) {
        return Ok(pin);
    }
    let known: Vec<&str> = PINS.iter().map(|p| p.platform).collect();
    let why = if wanted == "darwin/amd64" {
        "; the onnxruntime project publishes no macOS x86_64 wheel after 1.23.2, older than the \
         ONNX Runtime API 1.31 nimify needs: build ONNX Runtime from source and set ORT_DYLIB_PATH"
            .to_string()
    } else {
        format!("; for another platform, set ORT_DYLIB_PATH to an ONNX Runtime {ORT_VERSION} library")
    };
    Err(format!("no pinned ONNX Runtime {ORT_VERSION} for {platform} (pinned: {}){why}", known.join(", ")))
}

/// `linux/x86_64`, `x86_64-unknown-linux-gnu`, `aarch64-apple-darwin` -> OCI names.
fn normalize(platform: &str) -> String {
    if let Some((os, arch)) = platform.split_once('/') {
        // Drop an OCI variant (`linux/arm64/v8`).
        let arch = arch.split('/').next().unwrap_or(arch);
        return platform_name(os, arch);
    }
    let parts: Vec<&str> = platform.split('-').collect();
    let os = if parts.contains(&"linux") {
        "linux"
    } else if parts.contains(&"darwin") || parts.contains(&"apple") {
        "darwin"
    } else if parts.contains(&"windows") {
        "windows"
    } else {
        return platform.to_string();
    };
    platform_name(os, parts[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One listing written by `cargo xtask ort-listings`.
    struct Listing {
        wheel: String,
        size: u64,
        sha256: String,
        files: Vec<(String, u64, String)>,
    }

    fn listing(platform: &str) -> Listing {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/ort/listings")
            .join(format!("{}.txt", platform.replace('/', "-")));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask ort-listings`)", path.display()));
        let mut out = Listing { wheel: String::new(), size: 0, sha256: String::new(), files: Vec::new() };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["wheel", name] => out.wheel = (*name).to_string(),
                ["size", n] => out.size = n.parse().expect("size"),
                ["sha256", h] => out.sha256 = (*h).to_string(),
                ["file", member, n, h] => out.files.push(((*member).into(), n.parse().expect("size"), (*h).into())),
                other => panic!("{}: unexpected line {other:?}", path.display()),
            }
        }
        out
    }

    #[test]
    fn every_pin_matches_the_wheel_it_was_listed_from() {
        for pin in PINS {
            let listed = listing(pin.platform);
            assert_eq!(pin.wheel, listed.wheel, "{}: wheel name", pin.platform);
            assert_eq!(pin.wheel_size, listed.size, "{}: wheel size", pin.platform);
            assert_eq!(pin.wheel_sha256, listed.sha256, "{}: wheel sha256", pin.platform);
            assert!(pin.wheel.starts_with(&format!("onnxruntime-{ORT_VERSION}-")), "{}: version", pin.platform);
            for file in pin.files {
                let found = listed.files.iter().find(|(m, _, _)| m == file.member);
                let (_, size, sha256) =
                    found.unwrap_or_else(|| panic!("{}: {} not in the wheel", pin.platform, file.member));
                assert_eq!((file.size, file.sha256), (*size, sha256.as_str()), "{}: {}", pin.platform, file.member);
            }
        }
        // Every platform with a listing has a pin.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ort/listings");
        let mut listed: Vec<String> = std::fs::read_dir(dir)
            .expect("listings")
            .map(|e| e.expect("entry").file_name().to_string_lossy().trim_end_matches(".txt").replacen('-', "/", 1))
            .collect();
        listed.sort();
        let mut pinned: Vec<&str> = PINS.iter().map(|p| p.platform).collect();
        pinned.sort_unstable();
        assert_eq!(listed, pinned);
    }

    #[test]
    fn each_platform_installs_the_library_its_loader_looks_for() {
        let names: Vec<(&str, &str)> = PINS.iter().map(|p| (p.platform, p.library().name())).collect();
        assert_eq!(
            names,
            [
                ("linux/amd64", "libonnxruntime.so.1.32.0"),
                ("linux/arm64", "libonnxruntime.so.1.32.0"),
                ("darwin/arm64", "libonnxruntime.1.32.0.dylib"),
                ("windows/amd64", "onnxruntime.dll"),
            ]
        );
        // On the platform running the test, the lookup's file name is the pinned library's.
        if let Ok(pin) = find(&nimify::__private::ortlib::host_platform()) {
            assert_eq!(pin.library().name(), nimify::__private::ortlib::LIB_NAME);
        }
    }

    #[test]
    fn platforms_are_found_by_oci_name_rust_name_or_target_triple() {
        for (given, want) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("aarch64-unknown-linux-gnu", "linux/arm64"),
            ("x86_64-unknown-linux-musl", "linux/amd64"),
            ("aarch64-apple-darwin", "darwin/arm64"),
            ("macos/aarch64", "darwin/arm64"),
            ("x86_64-pc-windows-msvc", "windows/amd64"),
        ] {
            assert_eq!(find(given).map(|p| p.platform), Ok(want), "{given}");
        }
        let mac = find("x86_64-apple-darwin").expect_err("no Intel mac wheel");
        assert!(mac.contains("no macOS x86_64 wheel after 1.23.2"), "{mac}");
        let other = find("linux/riscv64").expect_err("not pinned");
        assert!(other.contains("pinned: linux/amd64, linux/arm64, darwin/arm64, windows/amd64"), "{other}");
        assert!(other.contains("ORT_DYLIB_PATH"), "{other}");
    }
}
