-- XML documents kept on an account's behalf, one per key: private XML
-- storage (XEP-0049: key "private <namespace> <name>", holding bookmarks of
-- XEP-0048 and roster notes of XEP-0145) and the vCard (XEP-0054: key
-- "vcard"). Identical in both dialects. The bytes of an account's documents
-- are bounded by storage.max_account_data_bytes (counted on write).
CREATE TABLE account_documents (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    doc_key TEXT NOT NULL,
    xml TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, doc_key)
);
