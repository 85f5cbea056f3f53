-- Shared data: lives in public and is visible to every tenant.
CREATE TABLE plans (
    id          serial  PRIMARY KEY,
    name        text    NOT NULL UNIQUE,
    price_cents integer NOT NULL CHECK (price_cents >= 0)
);

-- Which plan each tenant is on; tenancy_tenants is the crate's registry table.
CREATE TABLE tenant_plans (
    tenant_id bigint  PRIMARY KEY REFERENCES public.tenancy_tenants (id) ON DELETE CASCADE,
    plan_id   integer NOT NULL REFERENCES plans (id)
);

INSERT INTO plans (name, price_cents) VALUES ('free', 0), ('pro', 2900);
