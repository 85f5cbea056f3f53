-- Runs in each tenant's schema: unqualified names land there.
CREATE TABLE customers (
    id    bigserial PRIMARY KEY,
    name  text      NOT NULL,
    email text      NOT NULL UNIQUE
);
