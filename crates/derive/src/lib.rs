//! `#[derive(Trace)]`: precise tracing for goro's garbage-collected objects.
//!
//! The derive writes `Trace::trace` as a call on every field, in declaration order, for structs and
//! enums alike. Two rules make the generated impl sound, and both are enforced here at compile time
//! rather than documented as obligations:
//!
//! 1. **Every field is traced.** A field whose type has no `Trace` impl is a compile error. That is
//!    how `Cell<Gc<T>>`, `RefCell<..>` and `Mutex<..>` fields are rejected: they have no `Trace` impl,
//!    because a store through them would bypass the write barrier. Use `GcCell` instead.
//! 2. **No user `Drop`.** The drop glue of a collected object runs during sweeping, when the objects
//!    it points to may already be gone. The derive emits an impl of the hidden `NoUserDrop` trait,
//!    which has a blanket impl for every `T: Drop`; a type that implements `Drop` therefore fails with
//!    "conflicting implementations of trait `NoUserDrop`". Clean-up code belongs in `add_cleanup`.
//!
//! Generic parameters get a `Trace` bound. The path of the collector crate defaults to `::goro::gc`;
//! code that uses `goro-gc` directly writes `#[trace(crate = "::goro_gc")]` (or `"crate"` inside it).

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, parse_macro_input, parse_quote};

/// Derives `Trace` for a struct or enum whose fields all implement `Trace`.
///
/// ```ignore
/// #[derive(goro::Trace)]
/// struct Node { left: Option<Gc<Node>>, right: Option<Gc<Node>>, value: u64 }
/// ```
#[proc_macro_derive(Trace, attributes(trace))]
pub fn derive_trace(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(mut input: DeriveInput) -> syn::Result<TokenStream2> {
    let krate = collector_path(&input)?;
    for param in input.generics.type_params_mut() {
        param.bounds.push(parse_quote!(#krate::Trace));
    }
    let body = trace_body(&input.data, &krate)?;
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        // SAFETY: every field is traced (the body names each one), and `NoUserDrop` below rules out
        // a `Drop` impl that could touch other collected objects during sweeping.
        unsafe impl #impl_generics #krate::Trace for #name #ty_generics #where_clause {
            #[inline]
            fn trace(&self, tracer: &mut #krate::Tracer) {
                #body
            }
        }
        impl #impl_generics #krate::__private::NoUserDrop for #name #ty_generics #where_clause {}
    })
}

/// Reads `#[trace(crate = "path")]`; defaults to `::goro::gc`.
fn collector_path(input: &DeriveInput) -> syn::Result<syn::Path> {
    let mut path: syn::Path = parse_quote!(::goro::gc);
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("trace")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let literal: syn::LitStr = meta.value()?.parse()?;
                path = literal.parse()?;
                Ok(())
            } else {
                Err(meta.error("unknown trace attribute; expected `crate = \"path\"`"))
            }
        })?;
    }
    Ok(path)
}

fn trace_body(data: &Data, krate: &syn::Path) -> syn::Result<TokenStream2> {
    match data {
        Data::Struct(data) => {
            let (pattern, calls) = destructure(&data.fields, krate);
            Ok(quote! { let Self #pattern = self; #calls })
        }
        Data::Enum(data) => {
            let arms = data.variants.iter().map(|variant| {
                let ident = &variant.ident;
                let (pattern, calls) = destructure(&variant.fields, krate);
                quote! { Self::#ident #pattern => { #calls } }
            });
            Ok(quote! {
                match self {
                    #(#arms)*
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            })
        }
        Data::Union(data) => Err(syn::Error::new(
            data.union_token.span,
            "Trace cannot be derived for a union: the collector cannot tell which field is live",
        )),
    }
}

/// A pattern binding every field, and one `Trace::trace` call per binding.
fn destructure(fields: &Fields, krate: &syn::Path) -> (TokenStream2, TokenStream2) {
    let bindings: Vec<_> = (0..fields.len())
        .map(|i| format_ident!("__field{}", i))
        .collect();
    let calls = quote! { #( #krate::Trace::trace(#bindings, tracer); )* };
    let pattern = match fields {
        Fields::Named(named) => {
            let names = named
                .named
                .iter()
                .map(|f| f.ident.as_ref().expect("named field"));
            quote! { { #( #names: #bindings ),* } }
        }
        Fields::Unnamed(_) => quote! { ( #( #bindings ),* ) },
        Fields::Unit => quote! {},
    };
    (pattern, calls)
}
