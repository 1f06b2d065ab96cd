//! Product search: what text a product is matched in, and how a term matches it.
//!
//! The contract asks that every term occur in the `sku`, `name` or `description`,
//! case-insensitively, and that means in any script: both the stored text (`rv_products.search`)
//! and each term go through [`fold`], and a term matches if its folding is a substring of the
//! product's (`LIKE`, served by the trigram index). Folding is Unicode's full case folding
//! (so `Σ`, `σ` and `ς` are alike, `ß` matches `ss`), between canonical decomposition and
//! recomposition (so `é` typed as one character or as `e` + accent is alike), with one
//! adjustment: full folding turns `İ` (capital I with dot) into `i` + combining dot above, and
//! that dot is dropped, so `istanbul` finds `İstanbul` (and `İSTANBUL` finds `istanbul`).
//! Only that dot: other accents stay significant (`cafe` does not find `café`), as the
//! contract promises case-insensitivity, not accent-insensitivity. Turkic folding (`I` → `ı`)
//! is not used: it would stop `I` from matching `i` for everyone else.
//!
//! Rows stored before this folding (plain `lower()`) match ASCII terms as before; a
//! `read-api rebuild` recomputes every row's search text (see README).

use caseless::Caseless;
use ordering_schema::events::ProductData;
use unicode_normalization::UnicodeNormalization;

/// `text` folded for caseless matching: NFD, full case folding, NFC, and the combining dot
/// above that folding leaves after an `i` (from `İ`) removed.
pub fn fold(text: &str) -> String {
    let folded: String = text.nfd().default_case_fold().nfc().collect();
    folded.replace("i\u{307}", "i")
}

/// The text `search` terms are matched in: the folded sku, name and description.
pub fn search_text(p: &ProductData) -> String {
    fold(&format!("{} {} {}", p.sku, p.name, p.description))
}

/// The `LIKE` pattern (escape `\`) that finds the folded `term` anywhere in a search text.
pub(super) fn like_pattern(term: &str) -> String {
    let folded = fold(term);
    let mut p = String::with_capacity(folded.len() + 2);
    p.push('%');
    for ch in folded.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_in_any_script() {
        for (a, b) in [
            ("ΟΔΟΣ", "οδοσ"),
            ("οδος", "οδοσ"),
            ("İstanbul", "istanbul"),
            ("ISTANBUL", "istanbul"),
            ("Straße", "strasse"),
            ("STRASSE", "strasse"),
            ("KE\u{301}", "ké"),
        ] {
            assert_eq!(fold(a), fold(b), "{a} vs {b}");
        }
        assert_ne!(fold("café"), fold("cafe"), "accents stay significant");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("50%_OFF\\"), "%50\\%\\_off\\\\%");
    }
}
