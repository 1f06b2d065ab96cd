//! Diesel table definitions of the write side (kept by hand in step with `migrations/`).

diesel::table! {
    products (id) {
        id -> Uuid,
        sku -> Text,
        name -> Text,
        description -> Text,
        price_cents -> Int8,
        currency -> Bpchar,
        stock -> Int8,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    orders (id) {
        id -> Uuid,
        customer_id -> Uuid,
        status -> Text,
        currency -> Bpchar,
        total_cents -> Int8,
        payment_reference -> Nullable<Text>,
        cancel_reason -> Nullable<Text>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    order_lines (order_id, line_no) {
        order_id -> Uuid,
        line_no -> Int4,
        product_id -> Uuid,
        sku -> Text,
        name -> Text,
        unit_price_cents -> Int8,
        quantity -> Int8,
        line_total_cents -> Int8,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        event_id -> Uuid,
        aggregate_type -> Text,
        aggregate_id -> Text,
        sequence -> Int8,
        event_type -> Text,
        payload -> Jsonb,
        headers -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (caller, target, key) {
        caller -> Text,
        target -> Text,
        key -> Text,
        request_hash -> Bytea,
        response_status -> Int2,
        response_headers -> Jsonb,
        response_body -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(order_lines -> orders (order_id));
diesel::joinable!(order_lines -> products (product_id));
diesel::allow_tables_to_appear_in_same_query!(products, orders, order_lines, outbox, idempotency_keys);
