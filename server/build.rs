//! Embeds the web client (every file under `client/web/`, dotfiles aside)
//! into the server binary at compile time.
//!
//! For each file it writes one `Asset` into `$OUT_DIR/web_assets.rs` (which
//! `src/http.rs` includes): the URL path, a content type chosen by the
//! extension, a strong ETag (the first 128 bits of the bytes' SHA-256), the
//! bytes themselves (`include_bytes!` of the source file) and, for text
//! types, a gzip copy made here when it is smaller — so serving costs the
//! event loop a table look-up, never a compression.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// The embedded files may not add up to more than this: the binary carries
/// them all, twice for compressible ones. A web client is a few hundred KiB;
/// past this something that is not a web client was put in the folder.
const WEB_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// How deep the folder is walked: a symlink loop cannot run forever.
const DEPTH_MAX: usize = 8;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let web = manifest.join("../client/web");
    println!("cargo:rerun-if-changed={}", web.display());

    let mut files = Vec::new();
    if web.is_dir() {
        walk(&web, &web, 0, &mut files);
    } else {
        println!(
            "cargo:warning=no web client at {}: GET / will answer 404",
            web.display()
        );
    }
    files.sort();
    let total: u64 = files
        .iter()
        .map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()))
        .sum();
    assert!(
        total <= WEB_BYTES_MAX,
        "client/web holds {total} bytes, over the {WEB_BYTES_MAX}-byte limit of build.rs"
    );

    let mut source = String::from("/// Every file of `client/web/`, by URL path.\n");
    source.push_str("pub static WEB_ASSETS: &[Asset] = &[\n");
    for (index, (url_path, file)) in files.iter().enumerate() {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let content_type = content_type(file);
        let tag = hex(&Sha256::digest(&bytes)[..16]);
        let gzip = compressible(content_type)
            .then(|| gzip(&bytes))
            .filter(|packed| packed.len() < bytes.len());
        let gzip = match gzip {
            Some(packed) => {
                let packed_path = out_dir.join(format!("web-asset-{index}.gz"));
                std::fs::write(&packed_path, packed).expect("write the gzip copy");
                format!(
                    "Some(include_bytes!({:?}))",
                    packed_path.display().to_string()
                )
            }
            None => "None".to_string(),
        };
        let file = file.canonicalize().expect("the file exists");
        writeln!(
            source,
            "    Asset {{ path: {url_path:?}, content_type: {content_type:?}, \
             etag: \"\\\"{tag}\\\"\", gzip_etag: \"\\\"{tag}.gz\\\"\", \
             body: include_bytes!({:?}), gzip: {gzip} }},",
            file.display().to_string()
        )
        .expect("write to a String");
    }
    source.push_str("];\n");
    std::fs::write(out_dir.join("web_assets.rs"), source).expect("write web_assets.rs");
}

/// Collects `(url path, file)` for every regular file under `dir`.
fn walk(root: &Path, dir: &Path, depth: usize, files: &mut Vec<(String, PathBuf)>) {
    assert!(depth <= DEPTH_MAX, "{} is nested too deeply", dir.display());
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if name.starts_with('.') {
            continue; // dotfiles (editor and tool settings) and non-UTF-8 names
        }
        if path.is_dir() {
            walk(root, &path, depth + 1, files);
        } else if path.is_file() {
            let relative = path.strip_prefix(root).expect("under the root");
            let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
            files.push((format!("/{}", parts.join("/")), path.clone()));
        }
    }
}

/// The `Content-Type` for a file, by its extension.
fn content_type(file: &Path) -> &'static str {
    let extension = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Whether gzip is worth trying (images and fonts are compressed already).
fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.starts_with("application/json")
        || content_type.starts_with("application/manifest")
        || content_type.starts_with("image/svg")
        || content_type == "application/wasm"
}

/// The bytes gzipped at the best level, with no timestamp (reproducible).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}
