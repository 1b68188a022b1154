//! What the kit warns about without failing a plugin: asset hosts the host would
//! refuse, usage that meets no priced unit, descriptions that name the provider.

use crate::host_pattern::HostPattern;
use crate::plugins::types;

/// What a completion shows that the host will not treat as the author likely means:
/// an asset it will refuse to fetch, usage it cannot price.
pub(super) fn completion_warnings(
    manifest: &types::Manifest,
    model: &types::Model,
    completion: &types::Completion,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // As the host allows them when the operator names no hosts of their own: the
    // manifest's hosts and the base URL's.
    let allowed: Vec<HostPattern> = manifest
        .allowed_hosts
        .iter()
        .filter_map(|entry| HostPattern::parse(entry).ok())
        .chain(
            url::Url::parse(&manifest.default_base_url)
                .ok()
                .and_then(|url| HostPattern::of(&url)),
        )
        .collect();
    for asset in &completion.assets {
        let types::AssetSource::Url(address) = &asset.source else {
            continue;
        };
        let parsed = url::Url::parse(address)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"));
        match parsed.as_ref().and_then(|url| Some((url, HostPattern::of(url)?))) {
            None => warnings.push(format!(
                "the output asset {address:?} is not an http(s) URL: the host will refuse to fetch it"
            )),
            Some((url, host)) if !allowed.iter().any(|pattern| pattern.matches(url)) => {
                warnings.push(format!(
                    "the output asset {address} is on {host}, which is not among the manifest's allowed-hosts: the host will refuse to fetch it"
                ))
            }
            Some(_) => {}
        }
    }
    if !completion.usage.meet(&model.price) {
        warnings.push(format!(
            "the completion's usage counts none of the units {} is priced by ({}): the host will charge the estimate instead",
            model.slug,
            priced_units(&model.price).join(", ")
        ));
    }
    warnings
}

fn priced_units(price: &types::Price) -> Vec<&'static str> {
    [
        (price.per_image, "per-image"),
        (price.per_megapixel, "per-megapixel"),
        (price.per_second, "per-second"),
        (price.per_million_input_tokens, "per-million-input-tokens"),
        (price.per_million_output_tokens, "per-million-output-tokens"),
    ]
    .into_iter()
    .filter(|(unit_price, _)| *unit_price > 0)
    .map(|(_, name)| name)
    .collect()
}

/// Catalogue descriptions are shown to clients, who must not learn which provider
/// serves a model: a description naming the plugin, its base URL's host or one of
/// its allowed hosts (as a whole word, in any case) is warned about.
pub fn description_warnings(manifest: &types::Manifest) -> Vec<String> {
    let base_host = url::Url::parse(&manifest.default_base_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string));
    let mut names: Vec<&str> = std::iter::once(manifest.name.as_str())
        .chain(base_host.as_deref())
        .chain(manifest.allowed_hosts.iter().map(String::as_str))
        .filter(|name| !name.trim().is_empty())
        .collect();
    // The longest first, so a warning names the host rather than the name in it.
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut warnings = Vec::new();
    for model in &manifest.models {
        if let Some(name) = names
            .iter()
            .find(|name| names_word(&model.description, name))
        {
            warnings.push(format!(
                "{}: the description names {name:?}; catalogue descriptions must not name a provider or its hosts",
                model.slug
            ));
        }
    }
    warnings
}

/// Whether `text` holds `word` in any case, not as part of a longer word.
fn names_word(text: &str, word: &str) -> bool {
    let (text, word) = (text.to_lowercase(), word.to_lowercase());
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(&word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}
