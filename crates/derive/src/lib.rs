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
//!    it points to may already be gone. The derive emits, inside an anonymous `const`, a trait of
//!    its own with a blanket impl for every `T: Drop` and an impl for the derived type; a type that
//!    implements `Drop` therefore fails with "conflicting implementations of trait
//!    `TracedTypesMustNotImplementDrop`". The check names nothing outside the expansion, so no
//!    `#[trace(crate = ..)]` path can swap it for a trait without the blanket impl.
//!
//! Generic parameters get a `Trace` bound. The path of the collector crate defaults to `::goro::gc`;
//! code that uses `goro-gc` directly writes `#[trace(crate = "::goro_gc")]` (or `"crate"` inside it).

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Data, DeriveInput, Expr, Fields, Ident, Pat, Token, parse_macro_input, parse_quote};

/// Derives `Trace` for a struct or enum whose fields all implement `Trace`.
///
/// ```text
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
        // SAFETY: every field is traced (the body names each one), and the check below rules out
        // a `Drop` impl that could touch other collected objects during sweeping.
        unsafe impl #impl_generics #krate::Trace for #name #ty_generics #where_clause {
            #[inline]
            fn trace(&self, tracer: &mut #krate::Tracer) {
                #body
            }
        }
        const _: () = {
            /// Implemented for every type with a `Drop` impl, and for the derived type: the two
            /// impls conflict exactly when the derived type has a user `Drop`.
            trait TracedTypesMustNotImplementDrop {}
            #[allow(drop_bounds, reason = "the bound is the point: it detects user Drop impls")]
            impl<T: ?::core::marker::Sized + ::core::ops::Drop> TracedTypesMustNotImplementDrop for T {}
            impl #impl_generics TracedTypesMustNotImplementDrop for #name #ty_generics #where_clause {}
        };
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

/// Go's `select`: waits on several channel operations and runs the one that proceeds.
///
/// ```text
/// goro::select! {
///     recv(rx) -> value => println!("got {value:?}"),      // value: Option<T>, None once closed
///     send(tx, 42) -> () => println!("sent"),               // panics if tx's channel is closed
///     recv(goro::chan::after(Duration::from_secs(1))) -> _ => println!("timeout"),
///     default => println!("nothing ready"),                 // optional: never block
/// }
/// ```
///
/// Among the operations that can proceed, one is chosen uniformly at random; without `default`,
/// the goroutine blocks until one can. `select! {}` blocks forever. The arms' values give the
/// value of the whole expression.
#[proc_macro]
pub fn select(input: TokenStream) -> TokenStream {
    let select = parse_macro_input!(input as Select);
    select.expand().into()
}

struct Select {
    cases: Vec<Case>,
}

struct Case {
    kind: Ident,
    args: Vec<Expr>,
    binding: Option<Pat>,
    body: Expr,
}

impl Parse for Select {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut cases = Vec::new();
        while !input.is_empty() {
            let kind: Ident = input.parse()?;
            let args = if kind == "default" {
                Vec::new()
            } else {
                let content;
                syn::parenthesized!(content in input);
                Punctuated::<Expr, Token![,]>::parse_terminated(&content)?
                    .into_iter()
                    .collect()
            };
            let binding = if input.peek(Token![->]) {
                input.parse::<Token![->]>()?;
                Some(Pat::parse_single(input)?)
            } else {
                None
            };
            input.parse::<Token![=>]>()?;
            let body: Expr = input.parse()?;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
            match (kind.to_string().as_str(), args.len()) {
                ("recv", 1) | ("send", 2) | ("default", 0) => {}
                ("recv", _) => {
                    return Err(syn::Error::new(
                        kind.span(),
                        "recv takes one receiver: recv(rx) -> v => ..",
                    ));
                }
                ("send", _) => {
                    return Err(syn::Error::new(
                        kind.span(),
                        "send takes a sender and a value: send(tx, v) -> () => ..",
                    ));
                }
                _ => {
                    return Err(syn::Error::new(
                        kind.span(),
                        "expected `recv(..)`, `send(..)` or `default`",
                    ));
                }
            }
            cases.push(Case {
                kind,
                args,
                binding,
                body,
            });
        }
        if cases.iter().filter(|c| c.kind == "default").count() > 1 {
            return Err(input.error("select! takes at most one `default`"));
        }
        Ok(Select { cases })
    }
}

impl Select {
    fn expand(&self) -> TokenStream2 {
        let krate = quote!(::goro::chan::__select);
        let mut setup = Vec::new();
        let mut refs = Vec::new();
        let mut arms = Vec::new();
        let mut default = None;
        let mut index = 0usize;
        for case in &self.cases {
            let body = &case.body;
            if case.kind == "default" {
                default = Some(quote!(#body));
                continue;
            }
            let handle = format_ident!("__goro_select_handle{}", index);
            let var = format_ident!("__goro_select_case{}", index);
            let channel = &case.args[0];
            if case.kind == "recv" {
                setup.push(quote! {
                    let #handle = &(#channel);
                    let mut #var = #krate::RecvCase::new(#handle);
                });
            } else {
                let value = &case.args[1];
                setup.push(quote! {
                    let #handle = &(#channel);
                    let mut #var = #krate::SendCase::new(#handle, #value);
                });
            }
            refs.push(quote!(#var.as_case()));
            let binding = case.binding.clone().unwrap_or_else(|| parse_quote!(_));
            arms.push(quote! {
                ::core::option::Option::Some(#index) => {
                    #[allow(clippy::let_unit_value, unused_variables)]
                    let #binding = #var.take();
                    #body
                }
            });
            index += 1;
        }
        let has_default = default.is_some();
        let fallback = default.unwrap_or_else(|| {
            quote!(::core::unreachable!(
                "select!: a blocking select returns a case"
            ))
        });
        quote! {{
            #(#setup)*
            match #krate::select(&mut [#(#refs),*], #has_default) {
                #(#arms)*
                _ => #fallback,
            }
        }}
    }
}
