//! `#[derive(Trace)]`: the expansion and the checks that make it sound.
//!
//! The expansion, for `struct Node<T> { next: Option<Gc<Node<T>>>, value: T }`:
//!
//! ```text
//! unsafe impl<T: Trace> Trace for Node<T> {              // `Trace` spanned at the `T` it bounds
//!     const POINTER_FREE: bool =                          // no field can hold a `Gc`
//!         true && <Option<Gc<Node<T>>> as Trace>::POINTER_FREE && <T as Trace>::POINTER_FREE;
//!     fn trace(&self, tracer: &mut Tracer) {
//!         let Self { next: __field0, value: __field1 } = self;
//!         Trace::trace(__field0, tracer);                 // each call spanned at its field's type
//!         Trace::trace(__field1, tracer);
//!     }
//! }
//! const _: () = { /* the no-`Drop` check, step 4 */ };
//! ```
//!
//! What it rejects, each with an error on the user's code rather than on the `derive` line:
//!
//! 1. **A union**, at `union`: the collector cannot tell which field is live.
//! 2. **`#[repr(packed)]`**, at `packed`: a field may be unaligned, and `trace` takes a reference
//!    to every field (a reference to an unaligned field is undefined behaviour; the conservative
//!    scan, which reads aligned words, would miss an unaligned `Gc` too).
//! 3. **A field whose type has no `Trace` impl**, at the field's type. Two ways:
//!    - syntactically, before expanding: a `Cell`, `RefCell`, `UnsafeCell`, `OnceCell`, `Mutex`,
//!      `RwLock`, `OnceLock` or `Rc` whose type arguments name `Gc`, anywhere inside the field's
//!      type (`Vec<RefCell<Gc<T>>>`), gets a message naming what to use instead (`GcCell`,
//!      `Gc`). These types have no `Trace` impl on purpose (goro-gc's `trace.rs`); the check
//!      only words the error, it guards nothing the trait bound does not.
//!    - otherwise by the compiler, from the `Trace::trace` call on the field: its
//!      `#[diagnostic::on_unimplemented]` message, on the field's type. This catches what a
//!      syntactic check cannot see through (aliases, macros, a user type without `Trace`).
//! 4. **A user `Drop` impl**, at the type's name. A collected object is dropped by the collector
//!    while it sweeps, when the objects its `Gc`s point to may already be freed, so its drop
//!    glue must not touch a `Gc`: only fields' drop glue, which `Trace` impls promise is safe,
//!    may run. Two items inside an anonymous `const`:
//!    - the guarantee: a trait of the expansion's own, `TracedTypesMustNotImplementDrop`, with a
//!      blanket impl for every `T: Drop` and one for the derived type. They conflict (E0119)
//!      exactly when the type implements `Drop`. The check names nothing outside the expansion,
//!      so no `#[trace(crate = ..)]` path can swap it for a trait without the blanket impl.
//!    - the explanation: an autoref probe (`(&Probe::<Node>).probe()` finds the method of
//!      `impl<T: Drop> ViaDrop for Probe<T>` first when `Node: Drop`, else the one of
//!      `impl<T> ViaNoDrop for &Probe<T>`; the items are prefixed `__Trace` in the expansion so
//!      they cannot shadow a user type) whose result must implement a trait with an
//!      `on_unimplemented` message saying what to do. It is only wording: the guarantee is the
//!      conflict above.
//!
//! Every type parameter gets a `Trace` bound (the `Trace` contract requires it of every
//! parameter, a hasher's included), spanned at the parameter: using the type with a parameter
//! that is not `Trace` fails where it is used, with a note that points at the parameter. A bound
//! on each field's type instead ("perfect derive") would overflow on recursive types.

use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, PathArguments, Type, parse_quote};

/// Expands `#[derive(Trace)]` on `input`, or returns every error found in it.
pub(crate) fn expand(mut input: DeriveInput) -> syn::Result<TokenStream2> {
    let krate = collector_path(&input)?;
    reject_packed(&input)?;
    reject_untraceable_fields(&input.data)?;
    let trace: syn::Path = parse_quote!(#krate::Trace);
    for param in input.generics.type_params_mut() {
        let bound = respan(&trace, param.ident.span());
        param.bounds.push(parse_quote!(#bound));
    }
    let body = trace_body(&input.data, &krate)?;
    let pointer_free = pointer_free(&input.data, &krate);
    let no_drop = no_drop_check(&input);
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        // SAFETY: every field is traced (the body names each one), and the check below rules out
        // a `Drop` impl that could touch other collected objects during sweeping.
        unsafe impl #impl_generics #trace for #name #ty_generics #where_clause {
            const POINTER_FREE: bool = #pointer_free;

            #[inline]
            fn trace(&self, tracer: &mut #krate::Tracer) {
                #body
            }
        }
        #no_drop
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

/// `path` with every token at `span`, so that an error about it points at `span`.
fn respan(path: &syn::Path, span: Span) -> TokenStream2 {
    path.to_token_stream()
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

/// `tokens`, each reported at `span`'s location (their hygiene kept), groups included.
fn relocate(tokens: TokenStream2, span: Span) -> TokenStream2 {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), relocate(group.stream(), span));
                inner.set_span(group.span().located_at(span));
                TokenTree::Group(inner)
            }
            mut token => {
                token.set_span(token.span().located_at(span));
                token
            }
        })
        .collect()
}

/// Rule 2: an error at `packed` in `#[repr(packed)]` or `#[repr(packed(N))]`.
fn reject_packed(input: &DeriveInput) -> syn::Result<()> {
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        let items = attr.parse_args_with(
            syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
        )?;
        if let Some(packed) = items.iter().find(|m| m.path().is_ident("packed")) {
            return Err(syn::Error::new_spanned(
                packed,
                "`Trace` cannot be derived for a `#[repr(packed)]` type: its fields may be \
                 unaligned, and tracing takes a reference to each field (undefined behaviour \
                 when it is unaligned; the conservative scan misses an unaligned `Gc` too). \
                 Remove `packed` (`#[repr(C)]` keeps a fixed field order), or keep the packed \
                 bytes in a field whose type holds no `Gc`",
            ));
        }
    }
    Ok(())
}

/// Rule 3, the syntactic half: every field whose type holds a `Gc` in a std cell, lock or `Rc`,
/// as one combined error.
fn reject_untraceable_fields(data: &Data) -> syn::Result<()> {
    let fields: Vec<&syn::Field> = match data {
        Data::Struct(data) => data.fields.iter().collect(),
        Data::Enum(data) => data.variants.iter().flat_map(|v| v.fields.iter()).collect(),
        // Rule 1: `trace_body` rejects the union itself.
        Data::Union(_) => return Ok(()),
    };
    let mut errors = fields
        .iter()
        .filter_map(|field| untraceable(&field.ty))
        .map(|(ty, wrapper)| syn::Error::new_spanned(ty, untraceable_message(wrapper)));
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            first.extend(errors);
            Err(first)
        }
    }
}

/// Std wrappers with no `Trace` impl that users reach for to share or mutate a `Gc`.
const UNTRACEABLE: &[&str] = &[
    "Cell",
    "RefCell",
    "UnsafeCell",
    "OnceCell",
    "Mutex",
    "RwLock",
    "OnceLock",
    "Rc",
];

/// The outermost part of `ty` that is one of [`UNTRACEABLE`] with a `Gc` in its type arguments,
/// with the wrapper's name. A type named like a std wrapper but holding no `Gc` is left to the
/// trait bound (a user's `Cell` may well be `Trace`).
fn untraceable(ty: &Type) -> Option<(&Type, String)> {
    match ty {
        Type::Path(path) => {
            let last = path.path.segments.last()?;
            let name = last.ident.to_string();
            if UNTRACEABLE.contains(&name.as_str()) && names_gc(last.arguments.to_token_stream()) {
                return Some((ty, name));
            }
            path.path
                .segments
                .iter()
                .find_map(|segment| match &segment.arguments {
                    PathArguments::AngleBracketed(args) => {
                        args.args.iter().find_map(|arg| match arg {
                            GenericArgument::Type(inner) => untraceable(inner),
                            _ => None,
                        })
                    }
                    _ => None,
                })
        }
        Type::Array(array) => untraceable(&array.elem),
        Type::Slice(slice) => untraceable(&slice.elem),
        Type::Paren(paren) => untraceable(&paren.elem),
        Type::Group(group) => untraceable(&group.elem),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(untraceable),
        _ => None,
    }
}

/// Whether the identifier `Gc` occurs anywhere in `tokens`.
fn names_gc(tokens: TokenStream2) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => ident == "Gc",
        TokenTree::Group(group) => names_gc(group.stream()),
        _ => false,
    })
}

fn untraceable_message(wrapper: String) -> String {
    match wrapper.as_str() {
        "Rc" => "a traced type cannot hold a `Gc` in an `Rc`: `Rc` has no `Trace` impl, so the \
                 collector would not see the `Gc` inside. Share the value with `Gc<T>` instead \
                 (`Rc<T>` becomes `Gc<T>`, `Rc<RefCell<T>>` becomes `Gc<GcCell<T>>`, with \
                 `goro::gc::{Gc, GcCell}`)"
            .to_string(),
        "Mutex" | "RwLock" | "OnceLock" => format!(
            "a traced type cannot hold a `Gc` in a `{wrapper}`: `{wrapper}` has no `Trace` impl, \
             because a store of a `Gc` into a collected object must go through the cell where \
             the collector puts its write barrier. Use `goro::gc::GcCell<T>` instead (`Sync` when \
             `T: Send + Sync`; a borrow that conflicts panics instead of blocking, so hold a \
             `goro::sync::Mutex` outside the object to wait)"
        ),
        _ => format!(
            "a traced type cannot hold a `Gc` in a `{wrapper}`: `{wrapper}` has no `Trace` impl, \
             because a store of a `Gc` into a collected object must go through the cell where \
             the collector puts its write barrier. Use `goro::gc::GcCell<T>` instead \
             (`{wrapper}<T>` becomes `GcCell<T>`; `borrow()`/`borrow_mut()` as on a `RefCell`)"
        ),
    }
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
            "`Trace` cannot be derived for a union: the collector cannot tell which field is live",
        )),
    }
}

/// `Trace::POINTER_FREE` of the type: true when every field's type is pointer-free (a union is
/// rejected by [`trace_body`]). Each term is spanned at its field's type, like the `trace` call.
fn pointer_free(data: &Data, krate: &syn::Path) -> TokenStream2 {
    let fields: Vec<&syn::Field> = match data {
        Data::Struct(data) => data.fields.iter().collect(),
        Data::Enum(data) => data.variants.iter().flat_map(|v| v.fields.iter()).collect(),
        Data::Union(_) => return quote! { false },
    };
    let terms = fields.iter().map(|field| {
        let span = field.ty.span();
        let trace = respan(&parse_quote!(#krate::Trace), span);
        // Every token at the span the field's `trace` call has, so that a field type without
        // `Trace` gets one error, not a second one here (the compiler merges identical ones).
        let ty: TokenStream2 = relocate(field.ty.to_token_stream(), span);
        quote_spanned! {span=> <#ty as #trace>::POINTER_FREE }
    });
    quote! { true #(&& #terms)* }
}

/// A pattern binding every field, and one `Trace::trace` call per binding. Each binding and its
/// call carry the span of the field's type, so that a field type without `Trace` is reported
/// there.
fn destructure(fields: &Fields, krate: &syn::Path) -> (TokenStream2, TokenStream2) {
    let bindings: Vec<Ident> = fields
        .iter()
        .enumerate()
        .map(|(i, field)| Ident::new(&format!("__field{i}"), field.ty.span()))
        .collect();
    let calls = fields.iter().zip(&bindings).map(|(field, binding)| {
        let span = field.ty.span();
        let trace = respan(&parse_quote!(#krate::Trace), span);
        quote_spanned! {span=> #trace::trace(#binding, tracer); }
    });
    let calls = quote! { #(#calls)* };
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

/// Rule 4: the conflicting impls that reject a user `Drop`, and the probe that explains it.
fn no_drop_check(input: &DeriveInput) -> TokenStream2 {
    let name = &input.ident;
    let span = name.span();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let conflicting = quote_spanned! {span=>
        impl #impl_generics TracedTypesMustNotImplementDrop for #name #ty_generics #where_clause {}
    };
    let probe = quote_spanned! {span=>
        (&__TraceDropProbe::<#name #ty_generics>(::core::marker::PhantomData)).probe();
    };
    quote! {
        const _: () = {
            /// Implemented for every type with a `Drop` impl, and for the derived type: the two
            /// impls conflict exactly when the derived type has a user `Drop`.
            trait TracedTypesMustNotImplementDrop {}
            #[allow(drop_bounds, reason = "the bound is the point: it detects user Drop impls")]
            impl<T: ?::core::marker::Sized + ::core::ops::Drop> TracedTypesMustNotImplementDrop for T {}
            #conflicting

            // The probe: wording only (module docs, rule 4). `__TraceWithoutUserDrop` has no
            // impl, so calling the `probe` of `__TraceViaDrop` is the error.
            struct __TraceDropProbe<T: ?::core::marker::Sized>(::core::marker::PhantomData<T>);
            #[diagnostic::on_unimplemented(
                message = "a type that derives `Trace` must not implement `Drop`: the collector \
                           drops it while sweeping, when the objects its `Gc` fields point to may \
                           already be freed",
                label = "this type derives `Trace` and has an `impl Drop`",
                note = "remove the `impl Drop`; the fields' own drop glue still runs",
                note = "to act when the object dies, register a cleanup with \
                        `goro::gc::add_cleanup(&gc, arg, |arg| ..)`: it runs after the object is \
                        freed and gets only `arg`",
                note = "to release a resource, put it in a field whose type holds no `Gc` and \
                        has the `Drop` impl (with `unsafe impl Trace` doing nothing), or release \
                        it explicitly before the last `Gc` to the object goes away"
            )]
            trait __TraceWithoutUserDrop {}
            trait __TraceViaDrop {
                fn probe(&self)
                where
                    Self: __TraceWithoutUserDrop,
                {
                }
            }
            #[allow(drop_bounds, reason = "the bound is the point: it detects user Drop impls")]
            impl<T: ?::core::marker::Sized + ::core::ops::Drop> __TraceViaDrop for __TraceDropProbe<T> {}
            trait __TraceViaNoDrop {
                fn probe(&self) {}
            }
            impl<T: ?::core::marker::Sized> __TraceViaNoDrop for &__TraceDropProbe<T> {}
            #[allow(dead_code, reason = "type-checked, never called")]
            fn check #impl_generics() #where_clause {
                #probe
            }
        };
    }
}
