//! `select!`: the parser of its arms and the expansion into `goro::chan::__select` calls.
//!
//! Each `recv(rx)`/`send(tx, v)` arm becomes a case value built before the call (so each channel
//! expression is evaluated once, in order), and the index `__select::select` returns picks the
//! arm whose body runs; `default` makes the select non-blocking.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Pat, Token, parse_quote};

/// A parsed `select!` invocation: its arms in source order.
pub(crate) struct Select {
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
    pub(crate) fn expand(&self) -> TokenStream2 {
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
