//! `/access/…`: the access-request form, requests and their review (being written).
