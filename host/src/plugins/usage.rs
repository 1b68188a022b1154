//! Usage against prices: whether reported usage counts what a price charges for.

use super::types::{Price, Usage};

impl Usage {
    /// Whether nothing billable beyond requests is counted.
    pub fn is_empty(&self) -> bool {
        self.images == 0
            && self.megapixels_milli == 0
            && self.seconds_milli == 0
            && self.input_tokens == 0
            && self.output_tokens == 0
    }

    /// Whether these units count anything `price` charges for beyond requests. A
    /// price with no such unit is met by any units.
    pub fn meet(&self, price: &Price) -> bool {
        let priced = [
            (price.per_image, u64::from(self.images)),
            (price.per_megapixel, self.megapixels_milli),
            (price.per_second, self.seconds_milli),
            (price.per_million_input_tokens, self.input_tokens),
            (price.per_million_output_tokens, self.output_tokens),
        ];
        let charged: Vec<u64> = priced
            .iter()
            .filter(|(unit_price, _)| *unit_price > 0)
            .map(|(_, quantity)| *quantity)
            .collect();
        charged.is_empty() || charged.iter().any(|quantity| *quantity > 0)
    }

    /// These units with at least `requests` requests.
    pub fn max_requests(self, requests: u32) -> Usage {
        Usage {
            requests: self.requests.max(requests),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            requests: 1,
            ..Usage::default()
        }
    }

    /// Regression: an adapter priced per megapixel that reported `images: 1` on
    /// completion was charged $0; such usage does not meet its price.
    #[test]
    fn usage_meets_a_price_only_by_a_unit_the_price_charges_for() {
        let per_megapixel = Price {
            per_megapixel: 40_000,
            ..Price::default()
        };
        let images_only = Usage {
            images: 1,
            ..usage()
        };
        assert!(!images_only.meet(&per_megapixel));
        let measured = Usage {
            megapixels_milli: 1_048,
            ..usage()
        };
        assert!(measured.meet(&per_megapixel));
        // A per-request price is met by any usage, reported or not.
        let per_request = Price {
            per_request: 10_000,
            ..Price::default()
        };
        assert!(usage().meet(&per_request) && Usage::default().meet(&per_request));
        // Tokens meet a token price even when only one side is counted.
        assert!(
            Usage {
                output_tokens: 5,
                ..usage()
            }
            .meet(&Price {
                per_million_input_tokens: 180_000,
                per_million_output_tokens: 180_000,
                ..Price::default()
            })
        );
    }
}
