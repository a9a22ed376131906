//! Where a wheel is on a Python package index that speaks the "simple" repository API: PyPI's
//! JSON form (PEP 691) or the HTML form (PEP 503) that mirrors, devpi and a plain directory
//! listing serve.

/// The index used when neither `--index-url`, `NIMIFY_INDEX_URL` nor `PIP_INDEX_URL` names one.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// What the index page is asked for: JSON first, HTML otherwise.
pub const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, text/html;q=0.1";

/// The URL of the project page listing a package's files.
pub fn project_page(index: &str, package: &str) -> String {
    format!("{}/{package}/", index.trim_end_matches('/'))
}

/// The address of `wheel` on the project page `page_url`, whose body `body` came with
/// `content_type`; `None` when the page does not list it.
pub fn wheel_url(page_url: &str, content_type: &str, body: &str, wheel: &str) -> Result<Option<String>, String> {
    let href = if content_type.contains("json") {
        let page: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("not a PEP 691 JSON page: {e}"))?;
        let files = page.get("files").and_then(|f| f.as_array()).ok_or("a PEP 691 JSON page without `files`")?;
        files
            .iter()
            .find(|f| f.get("filename").and_then(|n| n.as_str()) == Some(wheel))
            .and_then(|f| f.get("url").and_then(|u| u.as_str()))
            .map(str::to_owned)
    } else {
        hrefs(body).find(|h| file_name(h) == wheel).map(|h| unescape(&h))
    };
    // The fragment (`#sha256=...`) is for the client, never sent; the pin checks the bytes.
    Ok(href.map(|h| join(page_url, h.split('#').next().unwrap_or(&h))))
}

/// Every `href="..."` (or `'...'`) value of an HTML page, in order.
fn hrefs(html: &str) -> impl Iterator<Item = String> + '_ {
    html.match_indices("href=").filter_map(move |(at, _)| {
        let rest = &html[at + 5..];
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let value = &rest[1..];
        value.find(quote).map(|end| value[..end].to_string())
    })
}

/// The file name an address points at, without query or fragment (`#sha256=...`).
fn file_name(href: &str) -> &str {
    let path = href.split(['#', '?']).next().unwrap_or(href);
    path.rsplit('/').next().unwrap_or(path)
}

/// The HTML escapes an index uses in addresses.
fn unescape(href: &str) -> String {
    href.replace("&amp;", "&").replace("&#43;", "+").replace("&#x2B;", "+")
}

/// Resolves `href` against the page it was found on: absolute, scheme-relative, root-relative
/// or relative.
pub fn join(base: &str, href: &str) -> String {
    if href.contains("://") {
        return href.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(net) = href.strip_prefix("//") {
        return format!("{scheme}://{net}");
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    if href.starts_with('/') {
        return format!("{scheme}://{authority}{href}");
    }
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    let dir = path.rfind('/').map_or(path, |i| &path[..=i]);
    let dir = if dir.ends_with('/') { dir.to_string() } else { format!("{dir}/") };
    let mut segments: Vec<&str> = dir[authority.len()..].split('/').filter(|s| !s.is_empty()).collect();
    for part in href.split('/') {
        match part {
            "." | "" => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing = if href.ends_with('/') { "/" } else { "" };
    format!("{scheme}://{authority}/{}{trailing}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHEEL: &str = "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl";

    #[test]
    fn json_pages_give_the_files_url() {
        let body = format!(
            r#"{{"meta":{{"api-version":"1.1"}},"name":"onnxruntime","files":[
              {{"filename":"other.whl","url":"https://files.example/other.whl"}},
              {{"filename":"{WHEEL}","url":"https://files.example/packages/ab/{WHEEL}","hashes":{{"sha256":"00"}}}}]}}"#
        );
        let url =
            wheel_url("https://pypi.org/simple/onnxruntime/", "application/vnd.pypi.simple.v1+json", &body, WHEEL);
        assert_eq!(url, Ok(Some(format!("https://files.example/packages/ab/{WHEEL}"))));
        let missing = wheel_url("https://x/simple/onnxruntime/", "application/json", r#"{"files":[]}"#, WHEEL);
        assert_eq!(missing, Ok(None));
        assert!(wheel_url("https://x/", "application/json", "<html>", WHEEL).is_err());
        assert!(wheel_url("https://x/", "application/json", "{}", WHEEL).is_err());
    }

    #[test]
    fn html_pages_resolve_relative_links_and_drop_fragments() {
        let page = "http://127.0.0.1:8080/simple/onnxruntime/";
        let html = format!(
            "<html><body><a href=\"../../packages/x.whl\">x</a>\n<a href='../../packages/{WHEEL}#sha256=abc'>{WHEEL}</a></body></html>"
        );
        assert_eq!(
            wheel_url(page, "text/html", &html, WHEEL),
            Ok(Some(format!("http://127.0.0.1:8080/packages/{WHEEL}")))
        );
        // A directory listing: the file sits beside the page.
        let listing = format!("<li><a href=\"{WHEEL}\">{WHEEL}</a></li>");
        assert_eq!(wheel_url(page, "text/html; charset=utf-8", &listing, WHEEL), Ok(Some(format!("{page}{WHEEL}"))));
        assert_eq!(wheel_url(page, "text/html", "<a href=\"a.whl\">", WHEEL), Ok(None));
        assert_eq!(wheel_url(page, "text/html", "<a href=unquoted>", WHEEL), Ok(None));
    }

    #[test]
    fn joins_like_a_browser() {
        let base = "https://host:1/simple/pkg/";
        assert_eq!(join(base, "https://other/a.whl"), "https://other/a.whl");
        assert_eq!(join(base, "//cdn/a.whl"), "https://cdn/a.whl");
        assert_eq!(join(base, "/files/a.whl"), "https://host:1/files/a.whl");
        assert_eq!(join(base, "a.whl"), "https://host:1/simple/pkg/a.whl");
        assert_eq!(join(base, "./a.whl"), "https://host:1/simple/pkg/a.whl");
        assert_eq!(join(base, "../../a.whl"), "https://host:1/a.whl");
        assert_eq!(join("http://h/simple/pkg", "a.whl"), "http://h/simple/a.whl");
        assert_eq!(project_page("https://pypi.org/simple/", "onnxruntime"), "https://pypi.org/simple/onnxruntime/");
    }
}
