//! A direction's buffer or pipe: owned for the whole connection, or lent
//! from a stock for one burst at a time.
//!
//! The engines only know [`Stock`], so they do not depend on where spares
//! are kept (`resources.rs` implements it for buffers and pipes); [`Loan`]
//! is the one place that takes a spare for a burst and gives it back.

use std::io;

/// Where a direction's buffer or pipe comes from when it is lent per
/// burst.
pub trait Stock<T> {
    /// One for a burst: a spare, or a new one.
    fn take(&self) -> io::Result<T>;
    /// Back after a burst; the caller knows it is reusable (a pipe is
    /// empty).
    fn give(&self, t: T);
}

/// One direction's buffer or pipe. `slot` always holds one when there is
/// no stock (owned), only during a burst when there is.
pub struct Loan<'a, T, S> {
    slot: &'a mut Option<T>,
    stock: Option<&'a S>,
}

impl<'a, T, S: Stock<T>> Loan<'a, T, S> {
    pub fn new(slot: &'a mut Option<T>, stock: Option<&'a S>) -> Loan<'a, T, S> {
        Loan { slot, stock }
    }

    /// What is held now (during a burst, or owned).
    pub fn held(&self) -> Option<&T> {
        self.slot.as_ref()
    }

    /// The buffer or pipe for a burst: the one held, else one from the
    /// stock. An error when neither can be had (no stock and none owned,
    /// or the stock could not make one).
    pub fn get(&mut self) -> io::Result<&mut T> {
        if self.slot.is_none() {
            let stock = self
                .stock
                .ok_or_else(|| io::Error::other("engine without a buffer or pipe"))?;
            *self.slot = Some(stock.take()?);
        }
        self.slot
            .as_mut()
            .ok_or_else(|| io::Error::other("engine lost its buffer or pipe"))
    }

    /// The burst is over: give a lent one back to the stock (an owned one
    /// stays).
    pub fn end_burst(&mut self) {
        if let Some(stock) = self.stock {
            if let Some(t) = self.slot.take() {
                stock.give(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Count(RefCell<(u32, Vec<u32>)>);

    impl Stock<u32> for Count {
        fn take(&self) -> io::Result<u32> {
            let mut c = self.0.borrow_mut();
            c.0 += 1;
            Ok(c.0)
        }
        fn give(&self, t: u32) {
            self.0.borrow_mut().1.push(t);
        }
    }

    #[test]
    fn a_lent_one_is_taken_per_burst_and_given_back_an_owned_one_stays() {
        let stock = Count::default();
        let mut slot = None;
        let mut loan = Loan::new(&mut slot, Some(&stock));
        assert_eq!(loan.held(), None);
        assert_eq!(*loan.get().expect("lent"), 1);
        assert_eq!(*loan.get().expect("still held"), 1);
        loan.end_burst();
        assert_eq!(loan.held(), None);
        assert_eq!(*loan.get().expect("lent again"), 2);
        assert_eq!(stock.0.borrow().1, [1]);

        let mut own = Some(7);
        let mut loan: Loan<'_, u32, Count> = Loan::new(&mut own, None);
        loan.end_burst();
        assert_eq!(loan.held(), Some(&7));
        let mut none = None;
        let mut loan: Loan<'_, u32, Count> = Loan::new(&mut none, None);
        assert!(loan.get().is_err(), "neither owned nor a stock");
    }
}
