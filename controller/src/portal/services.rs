//! `/services` and `/services/<name>`: a page per service (being written).
