CREATE TABLE products (
    id          bigserial PRIMARY KEY,
    name        text      NOT NULL,
    price_cents integer   NOT NULL CHECK (price_cents >= 0)
);

CREATE TABLE orders (
    id          bigserial   PRIMARY KEY,
    customer_id bigint      NOT NULL REFERENCES customers (id),
    product_id  bigint      NOT NULL REFERENCES products (id),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id);
